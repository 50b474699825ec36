"""The cache-fill job (WARM_MODEL=<repo id>@<revision>): fill the EFS checkpoint cache, then exit 0.

Run once after deploy (or before a big run) so that the first render jobs find a completed cache instead of
all waiting on one downloader. With MODEL_S3_MIRROR set it then uploads the completed cache to that S3 mirror
(worker.checkpoint_s3), from which render jobs pull without EFS read charges. Errors propagate: the worker's
entry point maps them to exit codes.
"""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from pathlib import Path

from wanbatch.errors import ConfigError
from wanbatch.spec import DEFAULT_MODEL_REVISION
from worker.checkpoints import ensure_model, is_local_ref

log = logging.getLogger("worker.checkpoints")


def parse_model_ref(model_ref: str) -> tuple[str, str]:
    """`<repo id>@<revision>` -> (repo id, revision); the revision defaults to main."""
    repo_id, sep, revision = model_ref.strip().rpartition("@")
    if not sep:
        repo_id, revision = revision, DEFAULT_MODEL_REVISION
    if not repo_id or not revision:
        raise ConfigError(f"WARM_MODEL must be '<repo id>@<revision>', got {model_ref!r}")
    return repo_id, revision


def run_warm(model_ref: str, *, cache_dir: Path | None = None, s3_mirror: str | None = None) -> int:
    """Fill the cache for `model_ref`, then the S3 mirror if one is set; returns the exit code (0).

    `cache_dir` defaults to MODEL_CACHE_DIR and `s3_mirror` to MODEL_S3_MIRROR.
    """
    repo_id, revision = parse_model_ref(model_ref)
    cache_dir = Path(cache_dir or os.environ.get("MODEL_CACHE_DIR") or "/mnt/models")
    mirror = os.environ.get("MODEL_S3_MIRROR", "") if s3_mirror is None else s3_mirror
    from worker.checkpoint_hub import repo_dir, resolve_commit

    mirrored = bool(mirror) and not is_local_ref(repo_id) and not repo_id.startswith("s3://")
    # The hub, not the mirror's refs/, says where a branch points now: this job is what moves the fleet on.
    pinned = resolve_commit(repo_id, revision, repo_dir(cache_dir, repo_id)) if mirrored else revision
    # No NVMe promotion: the fill job's instance is not the one that will render.
    # A completed mirror fills EFS from S3 here (no hub download, no conversion); otherwise the hub does.
    resolved = ensure_model(repo_id, pinned, cache_dir=cache_dir, s3_mirror=mirror)
    resolved = replace(resolved, revision=revision)
    log.info(
        "checkpoint cache warm",
        extra={"repo_id": repo_id, "revision": revision, "commit": resolved.commit,
               "path": str(resolved.path),
               "files": len(resolved.files), "bytes": sum(f.bytes for f in resolved.files),
               "seconds": round(resolved.fetch_seconds, 1)},
    )  # fmt: skip
    if mirrored:
        from worker.checkpoint_s3 import upload_to_mirror

        upload_to_mirror(resolved, mirror)
    elif mirror:
        log.warning("only hub models are mirrored to S3", extra={"repo_id": repo_id, "mirror": mirror})
    return 0
