"""fp32 -> bf16 conversion of the two experts' safetensors, one shard at a time (RAM stays ~1 shard).

Inference runs the transformers in bf16, so storing them as bf16 halves what every later load reads
(~126 GB -> ~57 GB for Wan2.2-T2V-A14B). The VAE and text encoder are not touched.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from worker.checkpoints import temp_path

# Diffusers folder names of Wan2.2's two experts (high-noise and low-noise).
EXPERT_DIRS = ("transformer", "transformer_2")
TARGET_DTYPE = torch.bfloat16


def is_expert_shard(rel_path: str) -> bool:
    parts = rel_path.split("/")
    return len(parts) == 2 and parts[0] in EXPERT_DIRS and parts[1].endswith(".safetensors")


def is_expert_index(rel_path: str) -> bool:
    parts = rel_path.split("/")
    return len(parts) == 2 and parts[0] in EXPERT_DIRS and parts[1].endswith(".safetensors.index.json")


def needs_conversion(src: Path) -> bool:
    """True when a shard holds floating tensors that are not bf16 yet (bf16 mirrors are kept as is)."""
    with safe_open(src, framework="pt") as f:
        for name in f.keys():
            dtype = f.get_slice(name).get_dtype()
            if dtype in ("F32", "F16", "F64"):
                return True
    return False


def convert_shard(src: Path, dst: Path) -> int:
    """Write `src` with floating tensors cast to bf16 to `dst` (temp + rename); returns the tensor bytes.

    The returned size feeds the index's `metadata.total_size`, which counts tensor data, not file bytes.
    """
    tensors: dict[str, torch.Tensor] = {}
    with safe_open(src, framework="pt") as f:
        metadata = f.metadata()
        for name in f.keys():
            tensor = f.get_tensor(name)
            # Cast as read: each fp32 tensor is freed at once, so peak RAM is ~1.5x the bf16 shard.
            tensors[name] = tensor.to(TARGET_DTYPE) if tensor.is_floating_point() else tensor
    tmp = temp_path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, tmp, metadata=metadata)
    _fsync(tmp)
    os.replace(tmp, dst)
    return sum(t.numel() * t.element_size() for t in tensors.values())


def verify_shard(src: Path, dst: Path) -> None:
    """The converted shard has the source's tensors, shapes and values (as bf16); raises ValueError if not.

    Checked before the fp32 original is deleted; values are compared for the first and last tensor only,
    so verification reads a small part of the shard again rather than all of it.
    """
    with safe_open(src, framework="pt") as a, safe_open(dst, framework="pt") as b:
        names = list(a.keys())
        if sorted(names) != sorted(b.keys()):
            raise ValueError(f"{dst}: tensor names differ from {src}")
        for name in names:
            src_slice, dst_slice = a.get_slice(name), b.get_slice(name)
            if src_slice.get_shape() != dst_slice.get_shape():
                raise ValueError(f"{dst}: tensor {name!r} has shape {dst_slice.get_shape()}, expected "
                                 f"{src_slice.get_shape()}")  # fmt: skip
        for name in {names[0], names[-1]} if names else ():
            original, converted = a.get_tensor(name), b.get_tensor(name)
            expected = original.to(TARGET_DTYPE) if original.is_floating_point() else original
            if not torch.equal(expected, converted):
                raise ValueError(f"{dst}: tensor {name!r} does not equal its source cast to bf16")


def rewrite_index(src: Path, dst: Path, total_size: int) -> None:
    """Copy a sharded checkpoint's index with `metadata.total_size` set to the bf16 tensor bytes."""
    index = json.loads(src.read_text())
    index.setdefault("metadata", {})["total_size"] = total_size
    tmp = temp_path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, dst)


def index_shards(index_path: Path) -> list[str]:
    """The shard file names an index points to."""
    return sorted(set(json.loads(index_path.read_text()).get("weight_map", {}).values()))


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
