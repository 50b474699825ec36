"""Optional S3 source for checkpoints: a verified mirror of the completed cache, pulled with ranged GETs.

Why: every cold start that reads ~70 GB from EFS Elastic pays ~$0.03/GB (~$2) and gets ~1.5 GB/s per client;
S3 GETs inside a region carry no per-GB charge and scale with the instance's network. The cache-fill job
(worker.warm) uploads a completed cache once; render jobs pull it to local disk and verify every byte.

Layout under MODEL_S3_MIRROR (`s3://bucket/prefix/`, set by the stack when `weights_s3_mirror` is configured):

    <org>--<name>/refs/<revision>        the commit a branch or tag named when the fill job last ran
    <org>--<name>/<commit>/model/<path>  the cache's model files (bf16 experts), sha256 in object metadata
    <org>--<name>/<commit>/.complete     JSON: repo id, commit, every file's path, sha256 and bytes; put last

A branch is resolved through the mirror's refs/, not the hub: hundreds of instances starting together ask
neither the hub (rate limits) nor EFS, and the fleet moves to a new commit when the fill job runs again.
A missing ref or marker, an unreadable object or a sha256 mismatch falls back to the EFS/hub path.

Pulled into the local tier (LOCAL_CACHE_DIR: worker.local_tier's entry names, flock per host) or, without
one, into the EFS cache in worker.checkpoint_hub's layout under its NFS-safe fill lease, where it then
serves every later job like a hub fill. A model id `s3://bucket/<entry>/` names one mirror entry directly
(no fallback then: its errors are the job's).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import quote

from filelock import FileLock

from wanbatch.errors import ConfigError, ModelSourceError
from wanbatch.layout import parse_s3_uri
from worker.checkpoint_hub import COMMIT_RE, _fill_lock, read_complete, repo_dir
from worker.checkpoints import (
    MARKER,
    SIDECAR,
    ResolvedModel,
    WeightFile,
    sha256_file,
    temp_path,
    write_json_atomic,
)
from worker.local_tier import DEFAULT_MIN_FREE_BYTES, LOCK_WAIT_S, _make_room
from worker.storage import S3Storage, _s3_errors

log = logging.getLogger("worker.checkpoints")

MIRROR_ENV = "MODEL_S3_MIRROR"
PART_BYTES = 64 << 20  # ranged GET size: ~1,100 GETs per 70 GB (< $0.001), and fewer requests per prefix
# AWS guidance: one connection per ~85-90 MB/s, so ~30 fill g6e.4xlarge's 20 Gbps (benchmarks/fleet_sim.py).
MAX_CONCURRENCY = 32
MARKER_FORMAT = 1
MIN_FREE_BYTES = DEFAULT_MIN_FREE_BYTES  # left free on the local tier after a pull


@dataclass(frozen=True)
class Mirror:
    bucket: str
    prefix: str  # "" or ending in "/"

    @classmethod
    def parse(cls, uri: str) -> Mirror:
        if not uri.startswith("s3://") or not uri[5:].split("/", 1)[0]:
            raise ConfigError(f"{MIRROR_ENV} must be s3://bucket/prefix/, got {uri!r}")
        bucket, _, prefix = uri[5:].partition("/")
        prefix = prefix.strip("/")
        return cls(bucket, f"{prefix}/" if prefix else "")

    def entry_prefix(self, repo_id: str, commit: str) -> str:
        return f"{self.prefix}{_slug(repo_id)}/{commit}/"

    def ref_key(self, repo_id: str, revision: str) -> str:
        return f"{self.prefix}{_slug(repo_id)}/refs/{quote(revision, safe='')}"


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _slug(repo_id: str) -> str:
    return repo_id.replace("/", "--")


def _client_of(s3: S3Storage):
    # S3Storage keeps its boto3 client private; the transfer manager and HEAD need the same one.
    return s3._s3  # noqa: SLF001


def s3_client():
    """One client for small reads and the transfer manager; its pool must hold every parallel GET."""
    import boto3
    from botocore.config import Config

    config = Config(retries={"mode": "standard", "max_attempts": 5}, max_pool_connections=MAX_CONCURRENCY + 4)
    return boto3.client("s3", config=config)


# --- worker side: pull ----------------------------------------------------------------------------


def pull_from_mirror(
    repo_id: str,
    revision: str,
    mirror_uri: str,
    *,
    cache_dir: Path,
    local_cache_dir: Path | None,
    client=None,
) -> ResolvedModel | None:
    """The model pulled from the mirror (verified), or None when the mirror cannot serve it (logged)."""
    from botocore.exceptions import BotoCoreError, ClientError

    mirror = Mirror.parse(mirror_uri)
    s3 = S3Storage(mirror.bucket, client=client or s3_client())
    try:
        commit = revision if COMMIT_RE.match(revision) else _read_ref(s3, mirror.ref_key(repo_id, revision))
        marker = _read_marker(s3, mirror.entry_prefix(repo_id, commit))
        if marker["commit"] != commit or marker["repo_id"] != repo_id:
            raise ModelSourceError(f"mirror marker names {marker['repo_id']}@{marker['commit']}, "
                                   f"expected {repo_id}@{commit}", repo_id=repo_id)  # fmt: skip
        return _pull(s3, mirror.entry_prefix(repo_id, commit), marker, repo_id, revision,
                     cache_dir=cache_dir, local_cache_dir=local_cache_dir)  # fmt: skip
    except (OSError, ValueError, KeyError, ClientError, BotoCoreError) as exc:
        # OSError covers ModelSourceError (missing/corrupt), TransientError and a full disk.
        log.warning(
            "S3 weight mirror not usable: falling back to the EFS cache",
            extra={"repo_id": repo_id, "revision": revision, "mirror": mirror_uri,
                   "error": f"{type(exc).__name__}: {exc}"},
        )  # fmt: skip
        return None


def ensure_s3_model(
    uri: str, revision: str, *, cache_dir: Path, local_cache_dir: Path | None, client=None
) -> ResolvedModel:
    """A model id `s3://bucket/<mirror entry>/` (holding `.complete` and `model/`), pulled and verified."""
    try:
        bucket, key = parse_s3_uri(uri)
    except ValueError as exc:
        raise ModelSourceError(f"{uri!r} is not s3://bucket/<mirror entry>/", repo_id=uri) from exc
    s3 = S3Storage(bucket, client=client or s3_client())
    prefix = key.rstrip("/") + "/"
    marker = _read_marker(s3, prefix)
    return _pull(s3, prefix, marker, uri, revision, cache_dir=cache_dir, local_cache_dir=local_cache_dir)


def _read_ref(s3: S3Storage, key: str) -> str:
    try:
        commit = s3.read(key).decode().strip()
    except FileNotFoundError as exc:
        raise ModelSourceError(f"the mirror has no {key}: run the cache-fill job for this revision") from exc
    if not COMMIT_RE.match(commit):
        raise ModelSourceError(f"{s3.uri(key)} holds {commit[:80]!r}, not a commit sha")
    return commit


def _read_marker(s3: S3Storage, prefix: str) -> dict:
    """The entry's `.complete`, checked for shape; ModelSourceError when absent (upload not finished)."""
    try:
        marker = json.loads(s3.read(prefix + MARKER))
    except FileNotFoundError as exc:
        raise ModelSourceError(
            f"{s3.uri(prefix)} has no {MARKER}: no completed copy there (run the cache-fill job with "
            f"{MIRROR_ENV} set)"
        ) from exc
    if not isinstance(marker, dict) or not {"repo_id", "commit", "files"} <= marker.keys():
        raise ModelSourceError(f"{s3.uri(prefix + MARKER)} is not a mirror marker")
    for f in marker["files"]:
        parts = PurePosixPath(f["path"]).parts
        if not parts or PurePosixPath(f["path"]).is_absolute() or ".." in parts:
            raise ModelSourceError(f"{s3.uri(prefix + MARKER)} lists an unsafe path {f['path']!r}")
    return marker


def _pull(
    s3: S3Storage,
    prefix: str,
    marker: dict,
    repo_id: str,
    revision: str,
    *,
    cache_dir: Path,
    local_cache_dir: Path | None,
) -> ResolvedModel:
    files = tuple(WeightFile.from_dict(f) for f in marker["files"])
    origin, commit = marker["repo_id"], marker["commit"]
    if local_cache_dir is not None and Path(local_cache_dir).is_dir():
        root = Path(local_cache_dir)
        entry = root / f"models--{_slug(origin)}--{commit}"  # worker.local_tier's name: either fills it
        lock = FileLock(root / f"{entry.name}.lock", timeout=LOCK_WAIT_S)
    else:
        efs_root = repo_dir(Path(cache_dir), origin)
        entry = efs_root / commit
        if (done := read_complete(entry, repo_id, revision, commit)) is not None:
            return done  # without a local tier the model is read from EFS anyway: nothing to pull
        lock = _fill_lock(efs_root / f"{commit}.lock", origin, commit, LOCK_WAIT_S)
    if not (entry / MARKER).is_file():
        with lock:
            if not (entry / MARKER).is_file():  # another job may have pulled it while we waited
                need = sum(f.bytes for f in files)
                if local_cache_dir is not None and not _make_room(
                    entry.parent, need + MIN_FREE_BYTES, keep=entry.name
                ):
                    raise ModelSourceError(f"no room for {need} bytes in {entry.parent}")
                _download(s3, prefix, files, entry / "model")
                _finish(entry, origin, commit, files, source=s3.uri(prefix))
    os.utime(entry / MARKER)  # the local tier's LRU clock; harmless on EFS
    log.info("model from the S3 weight mirror", extra={"path": str(entry / "model"), "commit": commit})
    return ResolvedModel(entry / "model", repo_id, revision, commit, files, "s3", 0.0)


def _finish(entry: Path, origin: str, commit: str, files: tuple[WeightFile, ...], *, source: str) -> None:
    """Sidecar, then the marker (last), in the layout worker.checkpoint_hub.read_complete reads."""
    write_json_atomic(entry / SIDECAR, {"repo_id": origin, "commit": commit,
                                        "files": [f.to_dict() for f in files]})  # fmt: skip
    write_json_atomic(entry / MARKER, {"repo_id": origin, "commit": commit, "files": len(files),
                                       "bytes": sum(f.bytes for f in files), "source": source,
                                       "completed_at": _now()})  # fmt: skip
    # A hub fill that was cut off before the pull leaves its scratch behind; the cache is complete now.
    shutil.rmtree(entry / "download", ignore_errors=True)
    (entry / "fill.json").unlink(missing_ok=True)


class _HashingWriter:
    """A write-only sink (no seek): s3transfer then writes the parallel ranges in order, so the sha256 is
    computed as the bytes arrive and nothing is read back."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self._file = path, open(path, "wb")  # noqa: SIM115 - closed in _download
        self.digest, self.bytes = hashlib.sha256(), 0

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        self.bytes += len(data)
        return self._file.write(data)

    def close(self) -> None:
        self._file.close()


def _download(s3: S3Storage, prefix: str, files: tuple[WeightFile, ...], model_dir: Path) -> None:
    """Every file not already present (a cut-off pull resumes per file), verified, then renamed into place."""
    from boto3.s3.transfer import TransferConfig, create_transfer_manager

    started = time.monotonic()
    todo = [f for f in files if not _already_there(model_dir / f.path, f)]
    config = TransferConfig(multipart_threshold=PART_BYTES, multipart_chunksize=PART_BYTES,
                            max_concurrency=MAX_CONCURRENCY)  # fmt: skip
    writers = [_HashingWriter(temp_path(model_dir / f.path)) for f in todo]
    try:
        with _s3_errors(prefix), create_transfer_manager(_client_of(s3), config) as manager:
            futures = [
                manager.download(s3.bucket, f"{prefix}model/{f.path}", w)
                for f, w in zip(todo, writers, strict=True)
            ]
            for future in futures:
                future.result()
        for f, w in zip(todo, writers, strict=True):
            w.close()
            if w.bytes != f.bytes or w.digest.hexdigest() != f.sha256:
                raise ModelSourceError(
                    f"{s3.uri(prefix)}model/{f.path} has sha256 {w.digest.hexdigest()} ({w.bytes} bytes), "
                    f"the mirror's marker says {f.sha256} ({f.bytes} bytes): the mirror is corrupt; run the "
                    "cache-fill job again to re-upload it"
                )
            os.replace(w.path, model_dir / f.path)
    finally:
        for w in writers:
            w.close()
            w.path.unlink(missing_ok=True)
    total = sum(f.bytes for f in todo)
    seconds = time.monotonic() - started
    log.info("pulled model from the S3 weight mirror", extra={
        "files": len(todo), "bytes": total, "seconds": round(seconds, 2),
        "mb_per_s": round(total / max(seconds, 1e-6) / 1e6, 1)})  # fmt: skip


def _already_there(path: Path, expected: WeightFile) -> bool:
    return path.is_file() and path.stat().st_size == expected.bytes and sha256_file(path) == expected.sha256


# --- cache-fill side: upload ----------------------------------------------------------------------


def upload_to_mirror(resolved: ResolvedModel, mirror_uri: str, *, client=None) -> int:
    """Upload a completed cache to the mirror (files first, marker last, then refs/); returns bytes sent.

    Files already there with the same sha256 (object metadata) are skipped, so a cut-off upload resumes and
    a second fill job uploads nothing.
    """
    from boto3.s3.transfer import TransferConfig, create_transfer_manager

    if resolved.commit is None or resolved.repo_id.startswith("s3://"):
        raise ConfigError(f"only a hub model's cache can be mirrored, not {resolved.repo_id!r}")
    mirror = Mirror.parse(mirror_uri)
    s3 = S3Storage(mirror.bucket, client=client or s3_client())
    prefix = mirror.entry_prefix(resolved.repo_id, resolved.commit)
    sent = 0
    if not _marker_matches(s3, prefix, resolved):
        todo = [f for f in resolved.files if not _uploaded(s3, f"{prefix}model/{f.path}", f)]
        config = TransferConfig(multipart_threshold=PART_BYTES, multipart_chunksize=PART_BYTES,
                                max_concurrency=MAX_CONCURRENCY)  # fmt: skip
        with _s3_errors(prefix), create_transfer_manager(_client_of(s3), config) as manager:
            futures = [
                manager.upload(str(resolved.path / f.path), s3.bucket, f"{prefix}model/{f.path}",
                               extra_args={"Metadata": {"sha256": f.sha256}})  # fmt: skip
                for f in todo
            ]
            for future in futures:
                future.result()
        sent = sum(f.bytes for f in todo)
        marker = {"format": MARKER_FORMAT, "repo_id": resolved.repo_id, "commit": resolved.commit,
                  "files": [f.to_dict() for f in resolved.files],
                  "bytes": sum(f.bytes for f in resolved.files), "completed_at": _now()}  # fmt: skip
        s3.write(prefix + MARKER, json.dumps(marker, indent=1).encode(), "application/json")
    if resolved.revision != resolved.commit:
        s3.write(mirror.ref_key(resolved.repo_id, resolved.revision), resolved.commit.encode(), "text/plain")
    log.info("S3 weight mirror up to date", extra={"mirror": s3.uri(prefix), "uploaded_bytes": sent,
                                                    "files": len(resolved.files)})  # fmt: skip
    return sent


def _marker_matches(s3: S3Storage, prefix: str, resolved: ResolvedModel) -> bool:
    try:
        marker = _read_marker(s3, prefix)
    except ModelSourceError:
        return False
    return [WeightFile.from_dict(f) for f in marker["files"]] == list(resolved.files)


def _uploaded(s3: S3Storage, key: str, f: WeightFile) -> bool:
    from botocore.exceptions import ClientError

    try:
        with _s3_errors(key):
            head = _client_of(s3).head_object(Bucket=s3.bucket, Key=key)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return False
        raise
    return head.get("ContentLength") == f.bytes and head.get("Metadata", {}).get("sha256") == f.sha256
