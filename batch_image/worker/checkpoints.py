"""The checkpoint cache: a model id + revision -> a Diffusers folder with per-file sha256 (for manifests).

Sources: a local Diffusers folder (the tiny model, weights a user already has) is used in place; a hub repo is
downloaded once into `cache_dir` (EFS), its experts converted to bf16, hashed and marked complete (see
worker.checkpoint_hub). With `local_cache_dir` (instance NVMe) a completed cache is promoted to a
faster second tier (worker.local_tier). With an S3 weight mirror (MODEL_S3_MIRROR) a hub model is pulled
from S3 instead of read from EFS, and an `s3://` model id names a mirror entry (worker.checkpoint_s3).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from wanbatch.errors import ModelSourceError

log = logging.getLogger("worker.checkpoints")

HASH_CHUNK = 8 << 20
# Our own bookkeeping files: never part of the model, never hashed.
SIDECAR = "sha256.json"
MARKER = ".complete"
_IGNORED_NAMES = {SIDECAR, MARKER, ".last_used"}
_IGNORED_DIRS = {".cache", ".git"}


@dataclass(frozen=True)
class WeightFile:
    path: str  # relative to the model dir, e.g. "transformer/diffusion_pytorch_model.safetensors"
    sha256: str  # of the file as loaded (the derived bf16 file when converted)
    bytes: int
    source_sha256: str | None  # of the downloaded original when the cache converted it (fp32 -> bf16)

    def to_dict(self) -> dict:
        return {
            "path": self.path,
            "sha256": self.sha256,
            "bytes": self.bytes,
            "source_sha256": self.source_sha256,
        }

    @classmethod
    def from_dict(cls, raw: dict) -> WeightFile:
        return cls(raw["path"], raw["sha256"], int(raw["bytes"]), raw.get("source_sha256"))


@dataclass(frozen=True)
class ResolvedModel:
    path: Path  # a directory in Diffusers format: pass to WanPipeline components' from_pretrained
    repo_id: str  # as in the spec (a hub repo id or a local directory path)
    revision: str  # as in the spec
    commit: str | None  # resolved commit sha (None for a plain local directory)
    files: tuple[WeightFile, ...]
    source: str  # "hub" | "local" | "s3"
    fetch_seconds: float


def ensure_model(
    repo_id: str,
    revision: str,
    *,
    cache_dir: Path,
    local_cache_dir: Path | None = None,
    s3_mirror: str | None = None,
) -> ResolvedModel:
    """The spec's model as a ready Diffusers folder: filled into the cache on first use, reused after.

    `s3_mirror` is tried first for hub models (worker.checkpoint_s3); "" disables it. None reads
    MODEL_S3_MIRROR, so callers that predate the mirror (the job, the fill job) get it from the stack's env.
    """
    started = time.perf_counter()
    if repo_id.startswith("s3://"):
        from worker.checkpoint_s3 import ensure_s3_model

        resolved = ensure_s3_model(
            repo_id, revision, cache_dir=Path(cache_dir), local_cache_dir=local_cache_dir
        )
        return _with_seconds(resolved, time.perf_counter() - started)
    if is_local_ref(repo_id):
        return _local_model(repo_id, revision, cache_dir=Path(cache_dir), started=started)
    mirror = os.environ.get("MODEL_S3_MIRROR", "") if s3_mirror is None else s3_mirror
    if mirror:
        from worker.checkpoint_s3 import pull_from_mirror

        pulled = pull_from_mirror(
            repo_id, revision, mirror, cache_dir=Path(cache_dir), local_cache_dir=local_cache_dir
        )
        if pulled is not None:
            return _with_seconds(pulled, time.perf_counter() - started)
    from worker.checkpoint_hub import ensure_hub_model

    resolved = ensure_hub_model(repo_id, revision, cache_dir=Path(cache_dir))
    if local_cache_dir is not None:
        from worker.local_tier import promote

        resolved = promote(resolved, Path(local_cache_dir))
    return _with_seconds(resolved, time.perf_counter() - started)


def is_local_ref(repo_id: str) -> bool:
    """A path (existing, absolute, relative with ./ or ~) rather than a hub `org/name` id."""
    if repo_id.startswith(("/", "./", "../", "~", ".\\")) or repo_id in {".", ".."}:
        return True
    # "org/name" is a hub id unless a folder of that name exists here; a deeper path is never a hub id.
    return Path(repo_id).expanduser().is_dir() or repo_id.count("/") > 1


def _local_model(repo_id: str, revision: str, *, cache_dir: Path, started: float) -> ResolvedModel:
    path = Path(repo_id).expanduser().resolve()
    if not path.is_dir():
        raise ModelSourceError(
            f"model folder {repo_id!r} does not exist; give a Diffusers folder (with model_index.json) "
            "or a hub repo id such as Wan-AI/Wan2.2-T2V-A14B-Diffusers",
            repo_id=repo_id,
        )
    if not (path / "model_index.json").is_file():
        raise ModelSourceError(
            f"{path} is not a Diffusers model folder: model_index.json is missing", repo_id=repo_id
        )
    files = hash_tree(path, memo=_local_memo_path(cache_dir, path))
    log.info("model from local folder", extra={"model_path": str(path), "files": len(files)})
    return ResolvedModel(
        path=path,
        repo_id=repo_id,
        revision=revision,
        commit=None,
        files=files,
        source="local",
        fetch_seconds=time.perf_counter() - started,
    )


def model_files(root: Path) -> list[Path]:
    """Every file of a model folder, sorted, without our bookkeeping or the hub's `.cache/`."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _IGNORED_DIRS)
        for name in sorted(filenames):
            if name not in _IGNORED_NAMES and not name.endswith((".lock", ".tmp", ".incomplete", ".part")):
                found.append(Path(dirpath) / name)
    return found


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def hash_tree(root: Path, *, memo: Path | None = None) -> tuple[WeightFile, ...]:
    """sha256 of every model file; with `memo`, files whose size and mtime did not change are not re-read.

    A user's own 100+ GB folder should not be re-hashed by every job, hence the memo (kept in the cache dir,
    since the model folder itself may be read-only).
    """
    known: dict = {}
    if memo is not None and memo.is_file():
        try:
            known = json.loads(memo.read_text())
        except (OSError, ValueError):
            known = {}  # a torn memo only costs a re-hash
    files, fresh = [], {}
    for file in model_files(root):
        rel = file.relative_to(root).as_posix()
        st = file.stat()
        entry = known.get(rel)
        if not (entry and entry["bytes"] == st.st_size and entry["mtime_ns"] == st.st_mtime_ns):
            entry = {"sha256": sha256_file(file), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}
        fresh[rel] = entry
        files.append(WeightFile(rel, entry["sha256"], st.st_size, None))
    if memo is not None and fresh != known:
        try:
            write_json_atomic(memo, fresh)
        except OSError as exc:  # a read-only cache dir must not stop a local run
            log.warning("could not store the hash memo", extra={"memo": str(memo), "error": str(exc)})
    return tuple(files)


def _local_memo_path(cache_dir: Path, model_path: Path) -> Path:
    key = hashlib.sha256(str(model_path).encode()).hexdigest()[:16]
    return cache_dir / "local-hashes" / f"{key}.json"


def temp_path(path: Path) -> Path:
    """A temp name beside `path`, unique across threads, processes and hosts (container PIDs repeat)."""
    return path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")


def write_json_atomic(path: Path, data: object) -> None:
    """Write to a temp name in the same folder, then rename: readers never see a torn file (also on NFS)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _with_seconds(resolved: ResolvedModel, seconds: float) -> ResolvedModel:
    from dataclasses import replace

    return replace(resolved, fetch_seconds=seconds)
