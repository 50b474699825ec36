"""Host-side rates: the Spot-resume state save at 720p, and the checkpoint load rate (warm and cold cache).

    python -m benchmarks.io_rates --dir /tmp/bench_io --gb 12     # GPU machine, ~1-2 min
    python -m benchmarks.io_rates --tiny --device cpu             # code check only

S3 cannot be reached from the GPU machine, so the resume upload is not measured; BENCHMARKS.md estimates it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks import common
from benchmarks.common import log, run_guarded

CHUNK = 64 * 1024**2


def resume_save(device: str, tiny: bool, directory: Path, reps: int = 5) -> dict[str, Any]:
    """The worker's own Spot-resume save (`worker.resume.benchmark_state_save`) of a 720p-sized state into a
    local folder: the copy off `device` the loop waits for, then serialize, write and fsync."""
    from worker.resume import benchmark_state_save
    from worker.storage import LocalStorage

    shape = (1, 16, 3, 8, 8) if tiny else (1, *common.LATENT_SHAPES["720p"])
    saved = benchmark_state_save(
        LocalStorage(directory, "benchmark-run"), shape=shape, repeats=reps, device=device
    )
    totals = [run["copy_s"] + run["write_s"] for run in saved["runs"]]
    return {
        **saved,
        "median_s": statistics.median(totals),
        "copy_median_s": statistics.median(run["copy_s"] for run in saved["runs"]),
    }


def drop_page_cache(path: Path) -> str:
    """Evict `path` from the page cache if the machine lets us; returns how (or why not)."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return "drop_caches"
    except OSError as exc:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
        return f"fadvise (drop_caches refused: {exc.strerror})"


def plain_read(path: Path) -> int:
    total, buf = 0, bytearray(CHUNK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as fh:
        while n := fh.readinto(view):
            total += n
    return total


def load_rates(device: str, gib: float, directory: Path) -> dict[str, Any]:
    """Write a bf16 safetensors file of about `gib` GiB, then time loading it warm and (if possible) cold."""
    from safetensors.torch import load_file, save_file

    n_tensors = max(1, round(gib * 4))  # 256 MiB tensors, like a sharded checkpoint's large weights
    gen = torch.Generator(device=device).manual_seed(0)
    tensors = {
        f"w{i:04d}": torch.randn(8192, 16384, generator=gen, device=device, dtype=torch.bfloat16).cpu()
        if gib >= 0.25
        else torch.randn(64, 64, dtype=torch.bfloat16)
        for i in range(n_tensors)
    }
    path = directory / "weights.safetensors"
    t0 = time.perf_counter()
    save_file(tensors, str(path))
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())
    write_s = time.perf_counter() - t0
    size = path.stat().st_size
    del tensors
    gb = size / 1e9
    out: dict[str, Any] = {"bytes": size, "write_gbps": gb / write_s}

    def to_device() -> float:
        t, loaded = common.time_call(lambda: load_file(str(path), device=device), device)
        del loaded
        common.free_memory()
        return gb / t

    def read() -> float:
        t0 = time.perf_counter()
        plain_read(path)
        return gb / (time.perf_counter() - t0)

    out["warm_read_gbps"] = read()
    out["warm_load_gbps"] = to_device()
    out["cold_method"] = drop_page_cache(path)
    out["cold_load_gbps"] = to_device()
    drop_page_cache(path)
    out["cold_read_gbps"] = read()
    path.unlink()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default="/tmp/bench_io", type=Path, help="a folder on the local disk")
    parser.add_argument("--gb", default=12.0, type=float, help="size of the test checkpoint, GiB")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiny", action="store_true")
    args = parser.parse_args(argv)
    if args.gb <= 0:
        parser.error(f"--gb must be positive, got {args.gb}")
    args.dir.mkdir(parents=True, exist_ok=True)
    rec: dict[str, Any] = {"facts": common.machine_facts()}
    rec["resume_save"] = run_guarded(
        rec, "resume_save", lambda: resume_save(args.device, args.tiny, args.dir)
    )
    rec["load"] = run_guarded(
        rec, "load", lambda: load_rates(args.device, 0.01 if args.tiny else args.gb, args.dir)
    )
    common.write_part("io_rates", rec)
    keys: dict[str, Any] = {}
    if rec["resume_save"]:
        keys["resume_save_s_720p"] = round(rec["resume_save"]["median_s"], 4)
        keys["resume_state_mb_720p"] = round(rec["resume_save"]["bytes"] / 1e6, 1)
    if rec["load"]:
        keys.update({k: round(v, 2) for k, v in rec["load"].items() if k.endswith("_gbps")})
        keys["cold_cache_method"] = rec["load"]["cold_method"]
    common.merge_results(keys)
    log(f"io: {keys}; errors: {rec.get('errors', {})}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
