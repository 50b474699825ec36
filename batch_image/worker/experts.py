"""The two A14B experts: loaded straight onto their device, and (OFFLOAD=swap) one at a time from disk.

An expert's weights go from its safetensors files to the device through pinned buffers with plain reads
(`worker.weights`), not through diffusers' `from_pretrained`: that maps the files and copies tensor by
tensor from the mapping, and a load running next to the denoising loop stalled it (H200, 480p: a 5.2 s
step took 8.9 s while the low-noise expert loaded; BENCHMARKS.md, "End to end"). The model is built by
diffusers on the meta device and takes the loaded tensors as they are, in the dtypes `from_pretrained`
gives (bf16, with the modules the model keeps in fp32 in fp32).

With OFFLOAD=none the low-noise expert is read in a background thread while the high-noise steps run
(`load_expert_in_background`), instead of before the first step.

`swap` is for hosts with less memory than the model (a g6e.2xlarge has 64 GiB for 2 x 27 GiB experts plus
a 12.6 GiB text encoder): the expert in use lives on the GPU only, the other stays on disk (page cache or
NVMe) and is read straight into GPU memory when the denoising loop crosses the boundary. Nothing of the
experts is held in host memory, so the process's RSS is the text encoder plus PyTorch.
"""

from __future__ import annotations

import gc
import json
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from worker.progress import emit
from worker.weights import StoredTensor, read_to_device, stored_tensors

EXPERTS = ("transformer", "transformer_2")  # high-noise, low-noise (diffusers' WanPipeline names)
EXPERT_DTYPE = torch.bfloat16
# diffusers and transformers build a model's skeleton under accelerate's `init_empty_weights`, which swaps
# `nn.Module.register_parameter` process-wide: two loads at once (one in a background thread) could put
# each other's parameters on the meta device. Every load in the worker holds this lock.
MODEL_LOADING = threading.RLock()


def expert_config(model_dir: Path) -> Any:
    """The experts' shared config (patch size, channels), read without loading any weights."""
    from diffusers import WanTransformer3DModel
    from diffusers.configuration_utils import FrozenDict

    for name in EXPERTS:
        if (Path(model_dir) / name / "config.json").is_file():
            return FrozenDict(WanTransformer3DModel.load_config(model_dir, subfolder=name))
    raise FileNotFoundError(f"{model_dir} has neither transformer/ nor transformer_2/")


def present_experts(model_dir: Path) -> list[str]:
    """Which experts model_index.json names (Wan2.2-TI2V-5B has no transformer_2)."""
    index = json.loads((Path(model_dir) / "model_index.json").read_text())
    return [name for name in EXPERTS if (index.get(name) or [None])[0] is not None]


def load_expert(model_dir: Path, name: str, device: str) -> torch.nn.Module | None:
    """One expert read from its safetensors straight into `device` memory; None if the model has none."""
    from accelerate import init_empty_weights
    from diffusers import WanTransformer3DModel

    if name not in present_experts(model_dir):
        return None
    with MODEL_LOADING, init_empty_weights():  # parameters on the meta device, buffers (RoPE) real
        expert = WanTransformer3DModel.from_config(
            WanTransformer3DModel.load_config(model_dir, subfolder=name)
        )
    keep_fp32 = expert._keep_in_fp32_modules or []

    def dtype_for(stored: StoredTensor) -> torch.dtype:
        # As diffusers' from_pretrained(torch_dtype=bf16): floats in bf16, the listed modules in fp32.
        if not stored.dtype.is_floating_point:
            return stored.dtype
        kept = any(module in stored.name.split(".") for module in keep_fp32)
        return torch.float32 if kept else EXPERT_DTYPE

    weights = read_to_device(expert_files(model_dir, name), device, dtype_for)
    expert.load_state_dict(weights, strict=True, assign=True)
    expert.to(device)  # the RoPE tables, built on the host
    expert.register_to_config(_name_or_path=model_dir)  # as from_pretrained records it
    return expert.eval()


def expert_bytes(model_dir: Path, name: str) -> int:
    """The size of one expert's weights in EXPERT_DTYPE, from its safetensors headers (nothing else read)."""
    return sum(
        math.prod(stored.shape) * EXPERT_DTYPE.itemsize
        for path in expert_files(model_dir, name)
        for stored in stored_tensors(path)
    )


def expert_files(model_dir: Path, name: str) -> list[Path]:
    """The expert's safetensors shards: those its index names, else every file in its folder."""
    folder = Path(model_dir) / name
    indexes = sorted(folder.glob("*.safetensors.index.json"))
    if indexes:
        weight_map = json.loads(indexes[0].read_text())["weight_map"]
        return sorted({folder / file for file in weight_map.values()})
    return sorted(folder.glob("*.safetensors"))


def load_expert_in_background(model_dir: Path, name: str, device: str) -> Future:
    """`load_expert` in a thread, so the other expert's denoising steps run while this one is read.

    On CUDA the copies go on their own stream: on the default stream each one would wait for the queued
    denoising kernels and stall them in turn. The stream is synchronized before the future resolves, so
    the expert is complete on the GPU when the loop takes it.
    """
    stream = None
    if str(device).startswith("cuda"):
        stream = torch.cuda.Stream(torch.device(device))
        with torch.cuda.stream(stream):
            # One allocation for the whole expert, freed at once: the segment stays in the caching
            # allocator's pool for this stream, so the loader's thousand tensors need no cudaMalloc each.
            # Those hold the allocator's lock, which the loop takes for every op it launches.
            torch.empty(expert_bytes(model_dir, name), dtype=torch.uint8, device=device)

    def load() -> torch.nn.Module | None:
        if stream is None:
            return load_expert(model_dir, name, device)
        with torch.cuda.stream(stream):
            expert = load_expert(model_dir, name, device)
        stream.synchronize()
        return expert

    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"load-{name}")
    try:
        return pool.submit(load)
    finally:
        pool.shutdown(wait=False)  # the thread ends with the load; nothing else is ever queued


class ExpertSwap:
    """Keeps at most one expert in memory, on the GPU; `get` swaps when the loop asks for the other."""

    def __init__(self, model_dir: Path, device: str, prepare: Callable[[torch.nn.Module], None]):
        self.model_dir, self.device, self.prepare = Path(model_dir), device, prepare
        self.name: str | None = None
        self.loads = 0

    def get(self, pipe, name: str) -> torch.nn.Module:
        if self.name == name:
            return getattr(pipe, name)
        self.release(pipe)
        started = time.perf_counter()
        expert = load_expert(self.model_dir, name, self.device)
        if expert is None:
            raise ValueError(f"the model has no {name}")
        self.prepare(expert)
        pipe.register_modules(**{name: expert})
        self.name = name
        self.loads += 1
        emit("expert_loaded", expert=name, seconds=round(time.perf_counter() - started, 3), loads=self.loads)
        return expert

    def release(self, pipe) -> None:
        """Drop the expert on the GPU (before the other one loads, and before the VAE decodes)."""
        if self.name is None:
            return
        pipe.register_modules(**{self.name: None})
        self.name = None
        gc.collect()
        if str(self.device).startswith("cuda"):
            torch.cuda.empty_cache()
