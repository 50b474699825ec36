"""Fill the EFS checkpoint cache from the hub: once, under a lock, resumable, then marked complete.

Layout under `cache_dir` (MODEL_CACHE_DIR):

    models--<org>--<name>/
      refs/<revision>          commit a branch or tag resolved to (used when the hub is unreachable)
      <commit>.lock            the fill lock (a soft lease, see _fill_lock)
      <commit>/
        download/              the files as on the hub; `.part` files there are resumed (checkpoint_download)
        fill.json              progress of the conversion step (which files are done), removed at the end
        model/                 the Diffusers folder jobs load: bf16 experts, everything else as downloaded
        sha256.json            every model file's sha256 (and its fp32 source's when converted), written once
        .complete              written last: a cache without it is resumed, never loaded
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import socket
import time
from pathlib import Path
from urllib.parse import quote

from filelock import SoftFileLease, Timeout

from wanbatch.errors import ModelSourceError, TransientError
from worker import checkpoint_convert as convert
from worker.checkpoint_download import RemoteFile, download_files
from worker.checkpoints import (
    MARKER,
    SIDECAR,
    ResolvedModel,
    WeightFile,
    model_files,
    sha256_file,
    temp_path,
    write_json_atomic,
)

log = logging.getLogger("worker.checkpoints")

COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
# Every contender must agree on the lease: a holder whose marker is unchanged this long is taken over.
LEASE_SECONDS = 120.0
LOCK_POLL_SECONDS = 30.0  # how often a waiter logs while another job fills the cache
DEFAULT_WAIT_SECONDS = 3 * 3600.0  # ~126 GB at a slow 20 MB/s; past this the job exits 75 and is retried


def repo_dir(cache_dir: Path, repo_id: str) -> Path:
    return cache_dir / ("models--" + repo_id.replace("/", "--"))


def ensure_hub_model(
    repo_id: str, revision: str, *, cache_dir: Path, wait_seconds: float = DEFAULT_WAIT_SECONDS
) -> ResolvedModel:
    """A completed cache of `repo_id` at `revision`; the first caller fills it, the others wait and reuse."""
    root = repo_dir(cache_dir, repo_id)
    commit = resolve_commit(repo_id, revision, root)
    commit_dir = root / commit
    done = read_complete(commit_dir, repo_id, revision, commit)
    if done is not None:
        return done
    with _fill_lock(root / f"{commit}.lock", repo_id, commit, wait_seconds) as lease:
        done = read_complete(commit_dir, repo_id, revision, commit)
        if done is not None:
            log.info("checkpoint cache filled by another job", extra={"repo_id": repo_id, "commit": commit})
            return done
        _fill(repo_id, commit, commit_dir, lease)
    done = read_complete(commit_dir, repo_id, revision, commit)
    assert done is not None, "the fill writes the marker last"
    return done


# --- revision -> commit ---------------------------------------------------------------------------


def resolve_commit(repo_id: str, revision: str, root: Path) -> str:
    """A commit sha is used as is; a branch or tag is asked of the hub and recorded in refs/ (offline use)."""
    if COMMIT_RE.match(revision):
        return revision
    ref_file = root / "refs" / quote(revision, safe="")
    try:
        commit = _hub_info(repo_id, revision).sha
    except TransientError:
        if ref_file.is_file():
            commit = ref_file.read_text().strip()
            log.warning(
                "hub unreachable: using the recorded commit of the revision",
                extra={"repo_id": repo_id, "revision": revision, "commit": commit},
            )
            return commit
        raise
    if not ref_file.is_file() or ref_file.read_text().strip() != commit:
        ref_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_path(ref_file)
        tmp.write_text(commit)
        os.replace(tmp, ref_file)
    log.info("revision resolved", extra={"repo_id": repo_id, "revision": revision, "commit": commit})
    return commit


def _hub_info(repo_id: str, revision: str, *, files_metadata: bool = False):
    """`HfApi.model_info`, with hub errors turned into ours: a missing repo is ModelSourceError (not retried),
    an unreachable hub is TransientError (retried)."""
    import httpx2
    from huggingface_hub import HfApi
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        return HfApi(endpoint=_endpoint()).model_info(
            repo_id, revision=revision, files_metadata=files_metadata
        )
    except RevisionNotFoundError as exc:
        raise ModelSourceError(
            f"revision {revision!r} does not exist in {repo_id}: give a branch, tag or commit sha",
            repo_id=repo_id,
        ) from exc
    except (RepositoryNotFoundError, GatedRepoError) as exc:
        raise ModelSourceError(
            f"model repo {repo_id!r} was not found on the hub, or it is private/gated: check the id, or set "
            "HF_TOKEN for a gated repo, or give a local Diffusers folder",
            repo_id=repo_id,
        ) from exc
    except (httpx2.TransportError, OfflineModeIsEnabled) as exc:
        raise TransientError(f"the hub is unreachable for {repo_id}@{revision}: {exc}") from exc
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else None
        if status is not None and (status >= 500 or status == 429):
            raise TransientError(f"the hub answered {status} for {repo_id}@{revision}") from exc
        raise ModelSourceError(f"the hub refused {repo_id}@{revision}: {exc}", repo_id=repo_id) from exc


# --- the completed cache --------------------------------------------------------------------------


def read_complete(commit_dir: Path, repo_id: str, revision: str, commit: str) -> ResolvedModel | None:
    """The cache as recorded when it was marked complete (no file is re-hashed), or None if not complete."""
    try:
        marker = json.loads((commit_dir / MARKER).read_text())
        sidecar = json.loads((commit_dir / SIDECAR).read_text())
    except FileNotFoundError:
        return None
    if marker.get("commit") != commit:
        raise ModelSourceError(
            f"{commit_dir / MARKER} records commit {marker.get('commit')}, expected {commit}"
        )
    return ResolvedModel(
        path=commit_dir / "model",
        repo_id=repo_id,
        revision=revision,
        commit=commit,
        files=tuple(WeightFile.from_dict(f) for f in sidecar["files"]),
        source="hub",
        fetch_seconds=0.0,
    )


# --- the NFS-safe lock ----------------------------------------------------------------------------


class _fill_lock:  # noqa: N801 - used as a context manager, reads like one
    """One filler per commit across jobs and instances.

    A soft lease (filelock.SoftFileLease: an O_EXCL-created marker file refreshed by a heartbeat thread)
    rather than fcntl/flock: exclusive create is atomic on NFSv4/EFS whatever the mount options, whereas
    fcntl locks silently become host-local under `local_lock`/`nolock` mounts. A dead holder on this host
    (dead pid) is taken over at once; one on another instance (a reclaimed Spot instance) stops refreshing,
    so after LEASE_SECONDS of an unchanged marker a waiter takes over and resumes the fill.
    Waiters log who they wait for every LOCK_POLL_SECONDS.
    """

    def __init__(self, path: Path, repo_id: str, commit: str, wait_seconds: float):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.lease = SoftFileLease(path, lease_duration=LEASE_SECONDS, thread_local=False)
        self.repo_id, self.commit, self.wait_seconds = repo_id, commit, wait_seconds

    def __enter__(self) -> SoftFileLease:
        deadline = time.monotonic() + self.wait_seconds
        while True:
            try:
                self.lease.acquire(timeout=min(LOCK_POLL_SECONDS, max(deadline - time.monotonic(), 0.0)))
                return self.lease
            except Timeout:
                if time.monotonic() >= deadline:
                    raise TransientError(
                        f"waited {self.wait_seconds:.0f}s for another job to fill the checkpoint cache of "
                        f"{self.repo_id}@{self.commit}; retry later"
                    ) from None
                log.info(
                    "waiting for another job to fill the checkpoint cache",
                    extra={"repo_id": self.repo_id, "commit": self.commit, "holder": _holder(self.lease)},
                )

    def __exit__(self, *exc_info) -> None:
        self.lease.release()


def _holder(lease: SoftFileLease) -> str:
    try:
        return Path(lease.lock_file).read_text().strip().replace("\n", " ")[:200]
    except OSError:
        return "?"


def _still_held(lease: SoftFileLease) -> None:
    """Raise before writing the marker if the lease was taken over (our heartbeat stalled past the lease)."""
    if lease.compromise is not None:
        raise TransientError(
            f"lost the checkpoint cache lock ({lease.compromise.reason}); retry resumes the fill"
        )


# --- the fill -------------------------------------------------------------------------------------


def _fill(repo_id: str, commit: str, commit_dir: Path, lease: SoftFileLease) -> None:
    download, model = commit_dir / "download", commit_dir / "model"
    state_file = commit_dir / "fill.json"
    state = json.loads(state_file.read_text()) if state_file.is_file() else {}
    started = time.monotonic()

    # 1. Download (continues `.part` files left by an interrupted job); skipped once finished, because
    #    step 2 deletes each converted original and a second download would fetch it again.
    if not state.get("downloaded"):
        info = _hub_info(repo_id, commit, files_metadata=True)
        expected = {s.rfilename: s.lfs.sha256 for s in info.siblings or () if s.lfs is not None}
        remote = [RemoteFile(s.rfilename, int(s.size or 0)) for s in info.siblings or ()]
        log.info("downloading checkpoint", extra={"repo_id": repo_id, "commit": commit, "to": str(download),
                                                  "files": len(remote), "bytes": sum(f.size for f in remote),
                                                  "host": socket.gethostname()})  # fmt: skip
        download_files(repo_id, commit, remote, download, endpoint=_endpoint())
        state = {"downloaded": True, "expected_sha256": expected, "files": {}}
        write_json_atomic(state_file, state)
        log.info(
            "download complete", extra={"repo_id": repo_id, "seconds": round(time.monotonic() - started, 1)}
        )

    # 2. Hash each original once, convert expert shards to bf16 (index files last, they need the shard sizes),
    #    move everything else; each finished file is recorded before its original goes away.
    done: dict = state["files"]
    _adopt_moved(model, download, done)
    sources = sorted(model_files(download), key=lambda p: convert.is_expert_index(_rel(p, download)))
    for src in sources:
        rel = _rel(src, download)
        if rel in done:
            continue
        dst = model / rel
        source_sha = sha256_file(src)
        want = state["expected_sha256"].get(rel)
        if want is not None and want != source_sha:
            src.unlink()
            state["downloaded"] = False  # the next attempt downloads the bad file again
            write_json_atomic(state_file, state)
            raise TransientError(f"{rel} of {repo_id}@{commit} has sha256 {source_sha}, the hub says {want}")
        if convert.is_expert_shard(rel) and convert.needs_conversion(src):
            tensor_bytes = convert.convert_shard(src, dst)
            convert.verify_shard(src, dst)
            entry = {"sha256": sha256_file(dst), "source_sha256": source_sha, "tensor_bytes": tensor_bytes}
            log.info("converted to bf16", extra={"file": rel, "source_bytes": src.stat().st_size,
                                                 "bytes": dst.stat().st_size})  # fmt: skip
        elif convert.is_expert_index(rel) and _converted_shards(rel, src, done):
            shards = _converted_shards(rel, src, done)
            convert.rewrite_index(src, dst, sum(done[s]["tensor_bytes"] for s in shards))
            entry = {"sha256": sha256_file(dst), "source_sha256": source_sha}
        else:
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dst)  # same file system: a rename, no copy
            entry = {"sha256": source_sha, "source_sha256": None}
        entry["bytes"] = dst.stat().st_size
        done[rel] = entry
        write_json_atomic(state_file, state)
        src.unlink(missing_ok=True)

    # 3. Sidecar, then the marker, last.
    _still_held(lease)
    files = [WeightFile(rel, e["sha256"], e["bytes"], e["source_sha256"]) for rel, e in sorted(done.items())]
    write_json_atomic(commit_dir / SIDECAR, {"repo_id": repo_id, "commit": commit,
                                             "files": [f.to_dict() for f in files]})  # fmt: skip
    total = sum(f.bytes for f in files)
    write_json_atomic(
        commit_dir / MARKER,
        {"repo_id": repo_id, "commit": commit, "files": len(files), "bytes": total,
         "completed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "host": socket.gethostname()},
    )  # fmt: skip
    shutil.rmtree(download, ignore_errors=True)
    state_file.unlink(missing_ok=True)
    log.info(
        "checkpoint cache complete",
        extra={
            "repo_id": repo_id,
            "commit": commit,
            "files": len(files),
            "bytes": total,
            "seconds": round(time.monotonic() - started, 1),
        },
    )


def _adopt_moved(model: Path, download: Path, done: dict) -> None:
    """Record files a killed fill moved into model/ but did not record yet (their original is gone).

    Converted files need no adoption: their original is deleted only after they are recorded.
    """
    if not model.is_dir():
        return
    for dst in model_files(model):
        rel = _rel(dst, model)
        if rel not in done and not (download / rel).exists():
            done[rel] = {"sha256": sha256_file(dst), "source_sha256": None, "bytes": dst.stat().st_size}


def _converted_shards(index_rel: str, index_src: Path, done: dict) -> list[str]:
    """The index's shards (repo paths) when all were converted, else [] (the index is kept as is)."""
    folder = index_rel.split("/")[0]
    shards = [f"{folder}/{name}" for name in convert.index_shards(index_src)]
    return shards if shards and all("tensor_bytes" in done.get(s, {}) for s in shards) else []


def _endpoint() -> str | None:
    # Read per call (huggingface_hub reads HF_ENDPOINT once, at import): a mirror set later still applies.
    return os.environ.get("HF_ENDPOINT") or None


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()
