"""The cache-fill job (WARM_MODEL=<repo id>@<revision>): fill the EFS checkpoint cache, then exit 0.

Run once after deploy (or before a big run) so that the first render jobs find a completed cache instead of
all waiting on one downloader. Errors propagate: the worker's entry point maps them to exit codes.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from wanbatch.errors import ConfigError
from wanbatch.spec import DEFAULT_MODEL_REVISION
from worker.checkpoints import ensure_model

log = logging.getLogger("worker.checkpoints")


def parse_model_ref(model_ref: str) -> tuple[str, str]:
    """`<repo id>@<revision>` -> (repo id, revision); the revision defaults to main."""
    repo_id, sep, revision = model_ref.strip().rpartition("@")
    if not sep:
        repo_id, revision = revision, DEFAULT_MODEL_REVISION
    if not repo_id or not revision:
        raise ConfigError(f"WARM_MODEL must be '<repo id>@<revision>', got {model_ref!r}")
    return repo_id, revision


def run_warm(model_ref: str, *, cache_dir: Path | None = None) -> int:
    """Fill the cache for `model_ref`; returns the exit code (0). `cache_dir` defaults to MODEL_CACHE_DIR."""
    repo_id, revision = parse_model_ref(model_ref)
    cache_dir = Path(cache_dir or os.environ.get("MODEL_CACHE_DIR") or "/mnt/models")
    # No NVMe promotion: the fill job's instance is not the one that will render.
    resolved = ensure_model(repo_id, revision, cache_dir=cache_dir)
    log.info(
        "checkpoint cache warm",
        extra={"repo_id": repo_id, "revision": revision, "commit": resolved.commit,
               "path": str(resolved.path),
               "files": len(resolved.files), "bytes": sum(f.bytes for f in resolved.files),
               "seconds": round(resolved.fetch_seconds, 1)},
    )  # fmt: skip
    return 0
