"""Safetensors files read into device memory with plain reads through pinned buffers.

diffusers' `from_pretrained` maps each file and copies every tensor from the mapping with a pageable
host-to-GPU copy. Run in a background thread next to the denoising loop that stalled the loop: on the
H200 one 480p step took 8.9 s instead of 5.2 s while the low-noise expert loaded (BENCHMARKS.md, "End
to end"). Plain reads (`readinto`, the GIL released) into a few reused pinned buffers, each sent on with
an asynchronous copy on the caller's stream, leave the loop alone, and several readers at once read the
page cache faster than one mapping.

The safetensors API has no read-into-buffer call and does not expose where a tensor's bytes lie, so the
header (the format's 8-byte length and JSON table) is read here; the layout is the format's spec.
"""

from __future__ import annotations

import contextlib
import json
import struct
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

CHUNK_BYTES = 32 << 20  # one read and one host-to-device copy
BUFFERS = 2  # one being filled while the other is copied
READERS = 4  # files read at once: 14.1 GB/s from the page cache to an H200 (from_pretrained: 8.0)
# The safetensors dtype names (the format's spec) for the dtypes a Diffusers checkpoint holds.
SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}


@dataclass(frozen=True)
class StoredTensor:
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int  # absolute byte offset in the file
    nbytes: int


def stored_tensors(path: Path) -> list[StoredTensor]:
    """The tensors of one safetensors file, in file order, from its header."""
    with open(path, "rb") as file:
        (header_len,) = struct.unpack("<Q", file.read(8))
        header = json.loads(file.read(header_len))
    tensors = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] not in SAFETENSORS_DTYPES:
            raise ValueError(
                f"{path}: tensor {name} has dtype {info['dtype']}, which the loader does not read"
            )
        begin, end = info["data_offsets"]
        tensors.append(
            StoredTensor(
                name,
                SAFETENSORS_DTYPES[info["dtype"]],
                tuple(info["shape"]),
                8 + header_len + begin,
                end - begin,
            )
        )
    return sorted(tensors, key=lambda tensor: tensor.start)


def read_to_device(
    paths: list[Path],
    device: str | torch.device,
    dtype_for: Callable[[StoredTensor], torch.dtype],
    *,
    readers: int = READERS,
    chunk_bytes: int = CHUNK_BYTES,
) -> dict[str, torch.Tensor]:
    """Every tensor of `paths` on `device`, cast to `dtype_for(tensor)`; copies go on the current stream.

    The caller synchronizes that stream before using the tensors from another one (the loaders in
    worker.experts do). One file per reader thread at a time, each with its own buffers."""
    device = torch.device(device)
    stream = torch.cuda.current_stream(device) if device.type == "cuda" else None
    loaded: dict[str, torch.Tensor] = {}
    with ThreadPoolExecutor(max_workers=max(1, readers), thread_name_prefix="weights") as pool:
        files = [pool.submit(_read_file, path, device, stream, dtype_for, chunk_bytes) for path in paths]
        for tensors in files:
            loaded.update(tensors.result())  # the first failure is raised here
    return loaded


def _read_file(
    path: Path,
    device: torch.device,
    stream: torch.cuda.Stream | None,
    dtype_for: Callable[[StoredTensor], torch.dtype],
    chunk_bytes: int,
) -> dict[str, torch.Tensor]:
    pinned = stream is not None
    tensors: dict[str, torch.Tensor] = {}
    # The stream context also makes the stream's GPU current in this thread (a new thread's is GPU 0), so
    # the pinned buffers belong to the right device's context.
    context = torch.cuda.stream(stream) if pinned else contextlib.nullcontext()
    with context, open(path, "rb", buffering=0) as file:
        buffers = [torch.empty(chunk_bytes, dtype=torch.uint8, pin_memory=pinned) for _ in range(BUFFERS)]
        # A buffer is refilled only after the copy that last read it has run (its event).
        copied: list[torch.cuda.Event | None] = [None] * len(buffers)
        turn = 0
        for stored in stored_tensors(path):
            target = torch.empty(stored.shape, dtype=stored.dtype, device=device)
            flat = target.view(-1).view(torch.uint8)
            file.seek(stored.start)
            done = 0
            while done < stored.nbytes:
                size = min(chunk_bytes, stored.nbytes - done)
                index = turn % len(buffers)
                turn += 1
                if copied[index] is not None:
                    copied[index].synchronize()
                view = buffers[index][:size]
                _fill(file, memoryview(view.numpy()), f"{path}: ends inside tensor {stored.name}")
                flat[done : done + size].copy_(view, non_blocking=pinned)
                if pinned:
                    copied[index] = torch.cuda.Event()
                    copied[index].record(stream)
                done += size
            wanted = dtype_for(stored)
            tensors[stored.name] = target if wanted == stored.dtype else target.to(wanted)
        for event in copied:
            if event is not None:
                event.synchronize()  # the buffers are freed on return: their copies must have run
    return tensors


def _fill(file, buffer: memoryview, error: str) -> None:
    """Read until `buffer` is full (a network filesystem may return fewer bytes than asked)."""
    filled = 0
    while filled < len(buffer):
        read = file.readinto(buffer[filled:])
        if not read:
            raise OSError(error)
        filled += read
