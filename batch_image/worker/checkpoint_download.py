"""Resumable download of a hub repo's files at one commit: `<file>.part` files continue with Range requests.

Why not `snapshot_download`: huggingface_hub 2.4 writes each file to a per-process uniquely named temp file
and deletes it on failure, so a job killed mid-file (a Spot reclaim) loses that file's bytes and a retry
starts it from zero; with ~126 GB in 5-10 GB shards that is a lot to lose. Here only the fill-lock holder
downloads (worker.checkpoint_hub), so one fixed `.part` name per file is safe and the next holder resumes it.
Files are fetched in parallel through huggingface_hub's HTTP session, URLs and auth headers (HF_TOKEN).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from wanbatch.errors import ModelSourceError, TransientError

log = logging.getLogger("worker.checkpoints")

CHUNK = 8 << 20
PART_SUFFIX = ".part"
ATTEMPTS = 5  # per file and call, each resuming where the last broke off
PROGRESS_EVERY_S = 30.0


@dataclass(frozen=True)
class RemoteFile:
    path: str
    size: int


def download_files(
    repo_id: str, commit: str, files: list[RemoteFile], dest: Path, *, endpoint: str | None, workers: int = 8
) -> None:
    """Every file into `dest/<path>`; finished files are skipped, `.part` files are continued."""
    progress = _Progress(sum(f.size for f in files), repo_id)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="hub-download") as pool:
        for future in [pool.submit(_fetch, repo_id, commit, f, dest, endpoint, progress) for f in files]:
            future.result()
    progress.report(force=True)


def _fetch(repo_id: str, commit: str, f: RemoteFile, dest: Path, endpoint: str | None, progress) -> None:
    final = dest / f.path
    if final.is_file() and final.stat().st_size == f.size:
        progress.add(f.size)
        return
    final.parent.mkdir(parents=True, exist_ok=True)
    part = final.with_name(final.name + PART_SUFFIX)
    if part.exists() and part.stat().st_size > f.size:  # not this file's bytes: start over
        part.unlink()
    progress.add(part.stat().st_size if part.exists() else 0, resumed=True)
    for attempt in range(1, ATTEMPTS + 1):
        have = part.stat().st_size if part.exists() else 0
        try:
            _get(repo_id, commit, f, part, have, endpoint, progress)
            break
        except TransientError as exc:
            if attempt == ATTEMPTS:
                raise
            log.warning(
                "download interrupted, resuming",
                extra={"file": f.path, "attempt": attempt, "error": str(exc)},
            )
            time.sleep(min(2**attempt, 30))
    if (size := part.stat().st_size) != f.size:
        raise TransientError(f"{f.path}: got {size} bytes, expected {f.size}; a retry resumes it")
    os.replace(part, final)


def _get(repo_id: str, commit: str, f: RemoteFile, part: Path, have: int, endpoint, progress) -> None:
    import httpx2
    from huggingface_hub import hf_hub_url
    from huggingface_hub.errors import HfHubHTTPError
    from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

    if have == f.size:
        return
    url = hf_hub_url(repo_id, f.path, revision=commit, endpoint=endpoint)
    headers = build_hf_headers()
    headers["Accept-Encoding"] = "identity"  # byte offsets must be those of the file
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        with get_session().stream("GET", url, headers=headers, timeout=60.0) as response:
            hf_raise_for_status(response)
            mode = "ab"
            if have and response.status_code != 206:  # the server ignored the Range: take the whole file
                progress.add(-have, resumed=True)
                mode = "wb"
            with open(part, mode) as out:
                for chunk in response.iter_bytes(CHUNK):
                    out.write(chunk)
                    progress.add(len(chunk))
    except (httpx2.TransportError, httpx2.StreamError) as exc:
        raise TransientError(f"{f.path}: {exc}") from exc
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else 0
        if status >= 500 or status in (408, 429):
            raise TransientError(f"{f.path}: the hub answered {status}") from exc
        raise ModelSourceError(
            f"cannot download {f.path} of {repo_id}@{commit}: {exc}", repo_id=repo_id
        ) from exc


class _Progress:
    """Aggregated download progress as a log line every PROGRESS_EVERY_S (no bars in the container)."""

    def __init__(self, total: int, repo_id: str):
        self.total, self.repo_id = total, repo_id
        self.done = self.resumed = 0
        self.started = self.last = time.monotonic()
        self._lock = threading.Lock()

    def add(self, n: int, *, resumed: bool = False) -> None:
        with self._lock:
            self.done += n
            if resumed:
                self.resumed += n
        self.report()

    def report(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last < PROGRESS_EVERY_S:
            return
        self.last = now
        fetched = self.done - self.resumed
        log.info(
            "download progress",
            extra={"repo_id": self.repo_id, "bytes": self.done, "total_bytes": self.total,
                   "percent": round(100.0 * self.done / max(self.total, 1), 1), "resumed_bytes": self.resumed,
                   "mb_per_s": round(fetched / max(now - self.started, 1e-6) / 1e6, 1)},
        )  # fmt: skip
