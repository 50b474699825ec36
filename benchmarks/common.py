"""Shared helpers for the GPU benchmarks: machine facts, timing, random materialisation, results.json.

Every benchmark part merges its own keys into one results file and keeps the others (later issues add
theirs). The file is `benchmarks/results.json` unless `BENCH_RESULTS` names another (on the GPU machine
the run script points it under `$OUT`, and the keys are merged back here afterwards).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_RESULTS = REPO_ROOT / "benchmarks" / "results.json"
GIB = 1024**3

# Latent shapes (C, F, H, W) for 81 frames: the VAE compresses 4x in time and 8x in space.
LATENT_SHAPES: dict[str, tuple[int, int, int, int]] = {
    "480p": (16, 21, 60, 104),
    "720p": (16, 21, 90, 160),
}
# The FLOP model of the Wan2.2-A14B DiT.
A14B_DIM, A14B_FFN, A14B_LAYERS, TEXT_LEN = 5120, 13824, 40, 512


def results_path() -> Path:
    return Path(os.environ.get("BENCH_RESULTS", DEFAULT_RESULTS))


def merge_results(updates: dict[str, Any], path: Path | None = None) -> dict[str, Any]:
    """Merge `updates` into the results file, keeping every key another part wrote."""
    path = path or results_path()
    current: dict[str, Any] = {}
    if path.exists():
        current = json.loads(path.read_text() or "{}")
        if not isinstance(current, dict):
            raise ValueError(f"{path} must hold a JSON object, found {type(current).__name__}")
    current.update(updates)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(current, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)
    return current


def write_part(name: str, data: dict[str, Any]) -> None:
    """Write one part's full record (every number, errors too) beside the results file."""
    out = results_path().parent / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def tokens(size: str, patch: tuple[int, int, int] = (1, 2, 2)) -> int:
    _, f, h, w = LATENT_SHAPES[size]
    return (f // patch[0]) * (h // patch[1]) * (w // patch[2])


def dit_flops(
    seq_len: int,
    dim: int = A14B_DIM,
    ffn: int = A14B_FFN,
    layers: int = A14B_LAYERS,
    text_len: int = TEXT_LEN,
) -> float:
    """Model FLOPs of one DiT forward (batch 1) by the issue's formula; double it for the CFG pair."""
    per_layer = (
        8 * seq_len * dim**2  # self-attention q, k, v, o projections
        + 4 * seq_len**2 * dim  # self-attention scores and weighted sum
        + 4 * seq_len * dim**2  # cross-attention q and o projections
        + 4 * seq_len * text_len * dim  # cross-attention over the text tokens
        + 4 * seq_len * dim * ffn  # feed-forward
    )
    return float(per_layer * layers)


def machine_facts() -> dict[str, Any]:
    """Card, driver, torch and CUDA versions, as the GPU machine reports them."""
    facts: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
    }
    for mod in ("diffusers", "transformers", "huggingface_hub", "safetensors", "accelerate", "triton"):
        try:
            facts[mod] = __import__(mod).__version__
        except ImportError:
            facts[mod] = None
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        facts.update(
            card=torch.cuda.get_device_name(0),
            compute_capability=f"sm{props.major}{props.minor}",
            gpu_memory_gib=round(props.total_memory / GIB, 1),
            sm_count=props.multi_processor_count,
        )
        try:
            smi = (
                subprocess.run(
                    ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                    capture_output=True,
                    text=True,
                    timeout=30,
                    check=True,
                )
                .stdout.strip()
                .splitlines()[0]
            )
            name, driver, mem = (s.strip() for s in smi.split(","))
            facts.update(card=name, driver=driver, nvidia_smi_memory=mem)
        except (OSError, subprocess.SubprocessError, IndexError, ValueError) as exc:
            facts["nvidia_smi_error"] = repr(exc)
    else:
        facts["card"] = f"cpu ({platform.processor() or platform.machine()})"
    return facts


def sync(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_call(fn: Callable[[], Any], device: torch.device | str) -> tuple[float, Any]:
    """Seconds one call takes, synchronised on both sides (each call here runs for 0.1-30 s)."""
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - start, out


def timed_runs(fn: Callable[[], Any], device: torch.device | str, warmup: int, reps: int) -> dict[str, Any]:
    """Warm up, then time `reps` calls; returns the median, all times, the peak memory and the last output."""
    out = None
    for _ in range(warmup):
        _, out = time_call(fn, device)
    reset_peak(device)
    times = []
    for _ in range(reps):
        t, out = time_call(fn, device)
        times.append(t)
    return {"median_s": statistics.median(times), "times_s": times, "peak_gib": peak_gib(device), "out": out}


def reset_peak(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats()


def peak_gib(device: torch.device | str) -> float | None:
    if torch.device(device).type != "cuda":
        return None
    return round(torch.cuda.max_memory_allocated() / GIB, 2)


def free_memory() -> None:
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def matmul_tflops(device: torch.device | str, n: int = 8192, reps: int = 10) -> float:
    """bf16 matrix-product rate on random data (the ceiling the MFU is measured against)."""
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    t, _ = time_call(lambda: [a @ b for _ in range(reps)], device)
    return 2 * n**3 * reps / t / 1e12


def _init_param(t: torch.Tensor, name: str, gen: torch.Generator) -> None:
    """Random values that keep 40 layers finite; time and memory don't depend on them (never zeros)."""
    if name.endswith("bias"):
        t.normal_(0.0, 0.01, generator=gen)
    elif t.ndim == 1:
        t.normal_(1.0, 0.01, generator=gen)  # norm scales
    else:
        t.normal_(0.0, 0.02, generator=gen)


def materialize(
    build: Callable[[], nn.Module],
    device: torch.device | str,
    dtype: torch.dtype,
    keep_fp32: Iterable[str] = (),
    seed: int = 0,
) -> nn.Module:
    """Build a model with its parameters on the meta device, then allocate them on `device` and fill them.

    Parameters under a module named in `keep_fp32` stay float32, as `from_pretrained(torch_dtype=...)`
    keeps them (diffusers' and transformers' `_keep_in_fp32_modules`). Buffers (rope tables) are built
    normally and moved with the model, so they hold real values.
    """
    from accelerate import init_empty_weights

    keep = set(keep_fp32)
    with init_empty_weights(include_buffers=False):
        model = build()
    gen = torch.Generator(device=device).manual_seed(seed)
    for mod_name, mod in model.named_modules():
        for p_name, p in list(mod._parameters.items()):
            if p is None:
                continue
            full = f"{mod_name}.{p_name}" if mod_name else p_name
            dt = torch.float32 if keep.intersection(full.split(".")) else dtype
            t = torch.empty(p.shape, dtype=dt, device=device)
            _init_param(t, p_name, gen)
            mod._parameters[p_name] = nn.Parameter(t, requires_grad=False)
    return model.to(device).eval()


def inference_context(device: torch.device | str) -> Any:
    return torch.inference_mode() if torch.device(device).type != "cuda" else torch.no_grad()


def run_guarded(record: dict[str, Any], key: str, fn: Callable[[], Any]) -> Any:
    """Run one measurement; on failure record the error under `key` and carry on with the next."""
    try:
        value = fn()
    except Exception as exc:  # noqa: BLE001 - one failed measurement must not lose the others
        record.setdefault("errors", {})[key] = f"{type(exc).__name__}: {exc}"[:2000]
        print(f"[{key}] FAILED: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        free_memory()
        return None
    return value


def worker_module(name: str) -> Any:
    """A module of the job worker (`worker.<name>` in batch_image/), so benchmarks run the worker's code."""
    import importlib

    path = str(REPO_ROOT / "batch_image")
    if path not in sys.path:
        sys.path.insert(0, path)
    return importlib.import_module(f"worker.{name}")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


__all__ = [
    "GIB",
    "LATENT_SHAPES",
    "REPO_ROOT",
    "dit_flops",
    "free_memory",
    "inference_context",
    "log",
    "machine_facts",
    "materialize",
    "matmul_tflops",
    "merge_results",
    "peak_gib",
    "reset_peak",
    "results_path",
    "run_guarded",
    "sync",
    "time_call",
    "timed_runs",
    "tokens",
    "worker_module",
    "write_part",
]
