"""Second cache tier on instance-store NVMe (LOCAL_CACHE_DIR): copy a verified EFS cache once per instance.

    <local_cache_dir>/<models--org--name>--<commit>/
        model/        the copy (every file checked against the sha256 recorded on EFS while it is copied)
        .complete     written last; its mtime is touched on every use (the LRU clock for eviction)
    <local_cache_dir>/<same name>.lock   fcntl lock: the tier is one host's local disk, so flock is exact
                                         and is released by the kernel when a container dies

Without a usable tier (unset, missing, too small even after eviction) the worker reads EFS, with a warning.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

from filelock import FileLock, Timeout

from wanbatch.errors import ModelSourceError
from worker.checkpoints import MARKER, ResolvedModel, WeightFile, temp_path, write_json_atomic

log = logging.getLogger("worker.checkpoints")

CHUNK = 16 << 20
DEFAULT_MIN_FREE_BYTES = 20 << 30  # left free after the copy: outputs, resume state and temp files need room
DEFAULT_WORKERS = 8  # parallel reads: EFS throughput grows with concurrent streams
IN_USE_GRACE_S = 3600.0  # a copy used this recently may still be loading in another container: not evicted
LOCK_WAIT_S = 3600.0


def promote(
    resolved: ResolvedModel,
    local_cache_dir: Path | None,
    *,
    min_free_bytes: int | None = None,
    workers: int = DEFAULT_WORKERS,
) -> ResolvedModel:
    """The model read from the NVMe copy (made now if needed), or `resolved` unchanged if not possible."""
    if resolved.commit is None or resolved.source == "local":
        return resolved  # a user's own folder is already local; only cached revisions are promoted
    if local_cache_dir is None or not Path(local_cache_dir).is_dir():
        log.warning(
            "no local cache tier: reading the model from EFS", extra={"local_cache_dir": str(local_cache_dir)}
        )
        return resolved
    root = Path(local_cache_dir)
    min_free_bytes = DEFAULT_MIN_FREE_BYTES if min_free_bytes is None else min_free_bytes
    entry = root / f"models--{resolved.repo_id.replace('/', '--')}--{resolved.commit}"
    if _is_complete(entry):
        return _use(entry, resolved)
    try:
        with FileLock(root / f"{entry.name}.lock", timeout=LOCK_WAIT_S):
            if _is_complete(entry):  # another container on this instance copied it while we waited
                return _use(entry, resolved)
            need = sum(f.bytes for f in resolved.files)
            if not _make_room(root, need + min_free_bytes, keep=entry.name):
                log.warning(
                    "local cache tier too small even after eviction: reading the model from EFS",
                    extra={"needed_bytes": need + min_free_bytes, "free_bytes": shutil.disk_usage(root).free},
                )
                return resolved
            _copy(resolved, entry, workers)
    except Timeout:
        log.warning(
            "timed out waiting for the local cache copy: reading from EFS", extra={"entry": str(entry)}
        )
        return resolved
    return _use(entry, resolved)


def _is_complete(entry: Path) -> bool:
    return (entry / MARKER).is_file()


def _use(entry: Path, resolved: ResolvedModel) -> ResolvedModel:
    os.utime(entry / MARKER)  # the LRU clock
    log.info("model from local cache tier", extra={"path": str(entry / "model"), "commit": resolved.commit})
    return replace(resolved, path=entry / "model")


def _copy(resolved: ResolvedModel, entry: Path, workers: int) -> None:
    started = time.monotonic()
    shutil.rmtree(entry, ignore_errors=True)  # a copy without a marker was cut off: start it again
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="nvme-copy") as pool:
        futures = [
            pool.submit(_copy_file, resolved.path / f.path, entry / "model" / f.path, f)
            for f in resolved.files
        ]
        try:
            for future in futures:
                future.result()
        except BaseException:
            for future in futures:
                future.cancel()
            raise
    total = sum(f.bytes for f in resolved.files)
    seconds = time.monotonic() - started
    write_json_atomic(entry / MARKER, {"repo_id": resolved.repo_id, "commit": resolved.commit,
                                       "files": len(resolved.files), "bytes": total,
                                       "copy_seconds": round(seconds, 2),
                                       "pid": os.getpid()})  # fmt: skip
    log.info(
        "copied model to local cache tier",
        extra={
            "entry": str(entry),
            "bytes": total,
            "seconds": round(seconds, 2),
            "mb_per_s": round(total / max(seconds, 1e-6) / 1e6, 1),
        },
    )


def _copy_file(src: Path, dst: Path, expected: WeightFile) -> None:
    """Copy while hashing what was read, so the bytes on NVMe are the ones recorded on EFS."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(dst)
    digest = hashlib.sha256()
    with open(src, "rb") as fin, open(tmp, "wb") as fout:
        while chunk := fin.read(CHUNK):
            digest.update(chunk)
            fout.write(chunk)
    if digest.hexdigest() != expected.sha256:
        tmp.unlink(missing_ok=True)
        raise ModelSourceError(
            f"{src} has sha256 {digest.hexdigest()} but the cache recorded {expected.sha256}: the EFS cache "
            "is corrupt; delete its commit folder (the one holding `model/` and `.complete`) so that the "
            "next job fills it again"
        )
    os.replace(tmp, dst)


def _make_room(root: Path, needed: int, *, keep: str) -> bool:
    """Evict least-recently-used other revisions until `needed` bytes are free; False if not enough."""
    if shutil.disk_usage(root).free >= needed:
        return True
    now = time.time()
    for entry in sorted(_entries(root, keep), key=_last_used):
        if now - _last_used(entry) < IN_USE_GRACE_S and _is_complete(entry):
            continue  # maybe loading in another container right now
        lock = FileLock(root / f"{entry.name}.lock", timeout=0)
        try:
            with lock:  # not while another container copies it
                log.info("evicting from local cache tier", extra={"entry": str(entry)})
                if _is_complete(entry):
                    (entry / MARKER).unlink()  # first, so no reader takes a half-deleted copy for complete
                shutil.rmtree(entry, ignore_errors=True)
        except Timeout:
            continue
        if shutil.disk_usage(root).free >= needed:
            return True
    return shutil.disk_usage(root).free >= needed


def _entries(root: Path, keep: str) -> list[Path]:
    return [p for p in root.iterdir() if p.is_dir() and p.name.startswith("models--") and p.name != keep]


def _last_used(entry: Path) -> float:
    marker = entry / MARKER
    return marker.stat().st_mtime if marker.exists() else entry.stat().st_mtime
