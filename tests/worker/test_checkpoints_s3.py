"""The S3 weight mirror: upload by the fill job, pull + verify, fallbacks, concurrency (moto S3)."""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path

import boto3
import pytest
from moto import mock_aws
from worker import checkpoint_s3
from worker.checkpoint_s3 import Mirror, upload_to_mirror
from worker.checkpoints import (
    MARKER,
    SIDECAR,
    ResolvedModel,
    ensure_model,
    hash_tree,
    sha256_file,
    write_json_atomic,
)

from wanbatch.errors import ConfigError, ModelSourceError

REPO_ID = "wan-test/tiny-wan"
COMMIT = "ab" * 20
BUCKET = "weights-mirror"
MIRROR = f"s3://{BUCKET}/mirror/"
ENTRY = f"mirror/wan-test--tiny-wan/{COMMIT}/"
BIG = "transformer/diffusion_pytorch_model.safetensors"


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("MODEL_S3_MIRROR", raising=False)
    monkeypatch.setattr(checkpoint_s3, "MIN_FREE_BYTES", 0)
    # 5 MiB parts (S3's minimum) so the 12 MiB file below travels as several ranged GETs / parts.
    monkeypatch.setattr(checkpoint_s3, "PART_BYTES", 5 << 20)
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        yield client


def efs_cache(cache_dir: Path, commit: str = COMMIT) -> ResolvedModel:
    """A completed EFS cache entry in worker.checkpoint_hub's layout, as the hub fill leaves it."""
    entry = cache_dir / "models--wan-test--tiny-wan" / commit
    model = entry / "model"
    (model / "transformer").mkdir(parents=True)
    (model / "vae").mkdir()
    (model / "model_index.json").write_text('{"_class_name": "WanPipeline"}')
    (model / BIG).write_bytes(os.urandom(12 << 20))
    (model / "vae" / "diffusion_pytorch_model.safetensors").write_bytes(os.urandom(64 << 10))
    files = hash_tree(model)
    write_json_atomic(entry / SIDECAR, {"repo_id": REPO_ID, "commit": commit,
                                        "files": [f.to_dict() for f in files]})  # fmt: skip
    write_json_atomic(entry / MARKER, {"repo_id": REPO_ID, "commit": commit})
    return ResolvedModel(model, REPO_ID, "main", commit, files, "hub", 0.0)


@pytest.fixture
def mirrored(s3, tmp_path: Path) -> ResolvedModel:
    """The fill job's result: a completed EFS cache uploaded to the mirror."""
    resolved = efs_cache(tmp_path / "fill-efs")
    upload_to_mirror(resolved, MIRROR, client=s3)
    return resolved


def pull(tmp_path: Path, *, nvme: bool = True, revision: str = "main", efs: str = "job-efs") -> ResolvedModel:
    local = tmp_path / "nvme"
    local.mkdir(exist_ok=True)
    return ensure_model(REPO_ID, revision, cache_dir=tmp_path / efs, local_cache_dir=local if nvme else None,
                        s3_mirror=MIRROR)  # fmt: skip


# --- upload (the cache-fill job) ------------------------------------------------------------------


def test_upload_puts_files_then_marker_and_branch_ref(s3, mirrored: ResolvedModel):
    marker = json.loads(s3.get_object(Bucket=BUCKET, Key=ENTRY + MARKER)["Body"].read())
    assert marker["commit"] == COMMIT and marker["repo_id"] == REPO_ID
    assert {f["path"]: f["sha256"] for f in marker["files"]} == {f.path: f.sha256 for f in mirrored.files}
    head = s3.head_object(Bucket=BUCKET, Key=f"{ENTRY}model/{BIG}")
    assert head["ContentLength"] == 12 << 20 and "-" in head["ETag"], "a multipart upload"
    assert head["Metadata"]["sha256"] == sha256_file(mirrored.path / BIG)
    ref = s3.get_object(Bucket=BUCKET, Key="mirror/wan-test--tiny-wan/refs/main")["Body"].read()
    assert ref.decode() == COMMIT


def test_a_second_upload_sends_nothing_and_a_cut_off_one_resumes(s3, mirrored: ResolvedModel):
    assert upload_to_mirror(mirrored, MIRROR, client=s3) == 0, "marker matches: nothing uploaded"
    s3.delete_object(Bucket=BUCKET, Key=ENTRY + MARKER)
    s3.delete_object(Bucket=BUCKET, Key=f"{ENTRY}model/model_index.json")
    sent = upload_to_mirror(mirrored, MIRROR, client=s3)
    assert sent == (mirrored.path / "model_index.json").stat().st_size, "only the missing file"
    assert s3.head_object(Bucket=BUCKET, Key=ENTRY + MARKER)["ContentLength"] > 0


def test_warm_uploads_the_filled_cache_when_a_mirror_is_set(s3, tmp_path: Path, monkeypatch):
    from worker import warm

    efs_cache(tmp_path / "efs")
    monkeypatch.setenv("MODEL_S3_MIRROR", MIRROR)
    assert warm.run_warm(f"{REPO_ID}@{COMMIT}", cache_dir=tmp_path / "efs") == 0
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET)["Contents"]}
    assert ENTRY + MARKER in keys and f"{ENTRY}model/{BIG}" in keys


def test_warm_resolves_a_branch_on_the_hub_not_in_the_mirror(s3, tmp_path: Path, monkeypatch):
    from worker import checkpoint_hub, warm

    efs_cache(tmp_path / "efs")
    stale = "cd" * 20
    s3.put_object(Bucket=BUCKET, Key="mirror/wan-test--tiny-wan/refs/main", Body=stale.encode())
    monkeypatch.setattr(checkpoint_hub, "_hub_info", lambda repo_id, rev, **_: type("I", (), {"sha": COMMIT}))
    warm.run_warm(f"{REPO_ID}@main", cache_dir=tmp_path / "efs", s3_mirror=MIRROR)
    ref = s3.get_object(Bucket=BUCKET, Key="mirror/wan-test--tiny-wan/refs/main")["Body"].read()
    assert ref.decode() == COMMIT, "the fill job moves the mirror's branch to the hub's commit"


def test_a_local_folder_is_not_mirrored(s3, tmp_path: Path, caplog):
    from worker import warm

    folder = tmp_path / "my-model"
    folder.mkdir()
    (folder / "model_index.json").write_text("{}")
    with caplog.at_level(logging.WARNING, logger="worker.checkpoints"):
        warm.run_warm(f"{folder}@main", cache_dir=tmp_path / "efs", s3_mirror=MIRROR)
    assert "only hub models" in caplog.text and "Contents" not in s3.list_objects_v2(Bucket=BUCKET)


# --- pull (render jobs) ---------------------------------------------------------------------------


def test_pull_to_the_local_tier_verifies_and_needs_no_hub_or_efs(mirrored: ResolvedModel, tmp_path: Path):
    resolved = pull(tmp_path)  # a branch: resolved through the mirror's refs/, no hub call (none is running)
    assert resolved.source == "s3" and resolved.commit == COMMIT and resolved.files == mirrored.files
    assert resolved.path == tmp_path / "nvme" / f"models--wan-test--tiny-wan--{COMMIT}" / "model"
    for f in mirrored.files:
        assert (resolved.path / f.path).read_bytes() == (mirrored.path / f.path).read_bytes()
    assert not (tmp_path / "job-efs").exists(), "EFS untouched"
    assert not list(resolved.path.rglob("*.tmp"))


def test_the_download_is_parallel_ranged_gets(mirrored: ResolvedModel, tmp_path: Path, monkeypatch):
    from botocore.client import BaseClient

    ranges: list[str] = []
    real = BaseClient._make_api_call

    def spy(self, operation, params):
        if operation == "GetObject" and params.get("Key", "").endswith(BIG):
            ranges.append(params.get("Range"))
        return real(self, operation, params)

    monkeypatch.setattr(BaseClient, "_make_api_call", spy)
    pull(tmp_path)
    assert len(ranges) == 3 and all(r and r.startswith("bytes=") for r in ranges), ranges


def test_a_second_job_on_the_instance_pulls_nothing(mirrored: ResolvedModel, tmp_path: Path, monkeypatch):
    first = pull(tmp_path)
    monkeypatch.setattr(checkpoint_s3, "_download", _forbidden)
    assert pull(tmp_path, revision=COMMIT).path == first.path


def _forbidden(*args, **kwargs):
    raise AssertionError("pulled again")


def test_without_a_local_tier_the_pull_fills_the_efs_cache(mirrored: ResolvedModel, tmp_path: Path):
    resolved = pull(tmp_path, nvme=False)
    entry = tmp_path / "job-efs" / "models--wan-test--tiny-wan" / COMMIT
    assert resolved.path == entry / "model" and (entry / MARKER).is_file()
    # The hub path now finds a completed cache (no hub is running: a commit needs no lookup).
    again = ensure_model(REPO_ID, COMMIT, cache_dir=tmp_path / "job-efs", s3_mirror="")
    assert again.source == "hub" and again.files == mirrored.files


def test_a_cut_off_pull_resumes_with_the_missing_files_only(mirrored, tmp_path: Path, monkeypatch):
    entry = tmp_path / "nvme" / f"models--wan-test--tiny-wan--{COMMIT}" / "model"
    (entry / "transformer").mkdir(parents=True)
    (entry / BIG).write_bytes((mirrored.path / BIG).read_bytes())  # a finished file, but no marker
    fetched: list[str] = []
    real = checkpoint_s3._download
    monkeypatch.setattr(checkpoint_s3, "_download", lambda s3, prefix, files, model_dir: (
        fetched.extend(f.path for f in files if not checkpoint_s3._already_there(model_dir / f.path, f)),
        real(s3, prefix, files, model_dir))[1])  # fmt: skip
    assert pull(tmp_path).source == "s3"
    assert BIG not in fetched and "model_index.json" in fetched


def test_concurrent_jobs_on_one_instance_pull_once(mirrored: ResolvedModel, tmp_path: Path, monkeypatch):
    calls, real = [], checkpoint_s3._download
    monkeypatch.setattr(checkpoint_s3, "_download", lambda *a: (calls.append(1), real(*a))[1])
    results: list[ResolvedModel] = []
    threads = [threading.Thread(target=lambda: results.append(pull(tmp_path))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(results) == 3 and len({r.path for r in results}) == 1 and len(calls) == 1


# --- fallbacks and errors -------------------------------------------------------------------------


def test_a_corrupt_object_falls_back_to_the_efs_cache(
    s3, mirrored: ResolvedModel, tmp_path: Path, caplog
):
    # Same size, other bytes: only the sha256 tells.
    s3.put_object(Bucket=BUCKET, Key=f"{ENTRY}model/{BIG}", Body=os.urandom(12 << 20))
    efs = efs_cache(tmp_path / "job-efs")
    with caplog.at_level(logging.WARNING, logger="worker.checkpoints"):
        resolved = pull(tmp_path, revision=COMMIT)
    assert resolved.source == "hub" and "mirror is corrupt" in fallback_reason(caplog)
    assert (resolved.path / BIG).read_bytes() == (efs.path / BIG).read_bytes(), "the EFS copy, promoted"


def test_a_corrupt_object_is_never_marked_complete(s3, mirrored: ResolvedModel, tmp_path: Path):
    s3.put_object(Bucket=BUCKET, Key=f"{ENTRY}model/{BIG}", Body=b"truncated")
    uri = f"s3://{BUCKET}/{ENTRY}"
    (tmp_path / "nvme").mkdir()
    with pytest.raises(ModelSourceError, match="mirror is corrupt"):
        ensure_model(uri, "main", cache_dir=tmp_path / "efs", local_cache_dir=tmp_path / "nvme")
    entry = tmp_path / "nvme" / f"models--wan-test--tiny-wan--{COMMIT}"
    assert not (entry / MARKER).exists() and not (entry / "model" / BIG).exists()
    assert not list(entry.rglob("*.tmp")), "temp files removed"


def test_a_missing_mirror_entry_falls_back(s3, tmp_path: Path, caplog):
    efs_cache(tmp_path / "job-efs")
    with caplog.at_level(logging.WARNING, logger="worker.checkpoints"):
        resolved = pull(tmp_path, revision=COMMIT)
    assert resolved.source == "hub" and "no completed copy" in fallback_reason(caplog)
    assert resolved.path == tmp_path / "nvme" / f"models--wan-test--tiny-wan--{COMMIT}" / "model", (
        "the EFS cache is still promoted to the local tier"
    )


def test_a_branch_missing_from_the_mirror_falls_back(
    mirrored: ResolvedModel, tmp_path: Path, caplog, monkeypatch
):
    from worker import checkpoint_hub

    efs_cache(tmp_path / "job-efs")
    monkeypatch.setattr(checkpoint_hub, "_hub_info", lambda repo_id, rev, **_: type("I", (), {"sha": COMMIT}))
    with caplog.at_level(logging.WARNING, logger="worker.checkpoints"):
        resolved = pull(tmp_path, revision="dev")  # no refs/dev in the mirror: the hub resolves it
    assert resolved.source == "hub" and resolved.commit == COMMIT
    assert "refs/dev" in fallback_reason(caplog)


def fallback_reason(caplog) -> str:
    return " ".join(getattr(r, "error", "") for r in caplog.records if "falling back" in r.getMessage())


def test_an_s3_model_id_names_a_mirror_entry(mirrored: ResolvedModel, tmp_path: Path):
    uri = f"s3://{BUCKET}/{ENTRY}"
    resolved = ensure_model(uri, "main", cache_dir=tmp_path / "efs")
    assert resolved.source == "s3" and resolved.commit == COMMIT and resolved.repo_id == uri
    assert (resolved.path / BIG).read_bytes() == (mirrored.path / BIG).read_bytes()
    with pytest.raises(ModelSourceError, match="no completed copy"):
        ensure_model(f"s3://{BUCKET}/nothing/here/", "main", cache_dir=tmp_path / "efs")


def test_unsafe_paths_in_a_marker_are_refused(s3, tmp_path: Path):
    bad = {"path": "../../etc/x", "sha256": "0", "bytes": 1}
    marker = {"repo_id": REPO_ID, "commit": COMMIT, "files": [bad]}
    s3.put_object(Bucket=BUCKET, Key=ENTRY + MARKER, Body=json.dumps(marker).encode())
    with pytest.raises(ModelSourceError, match="unsafe path"):
        ensure_model(f"s3://{BUCKET}/{ENTRY}", "main", cache_dir=tmp_path / "efs")


def test_mirror_uri_parsing():
    assert Mirror.parse("s3://b/p/q") == Mirror("b", "p/q/")
    assert Mirror.parse("s3://b") == Mirror("b", "")
    assert Mirror("b", "").ref_key("org/name", "feature/x") == "org--name/refs/feature%2Fx"
    for bad in ("b/p", "s3:///p", "https://b/p"):
        with pytest.raises(ConfigError, match="MODEL_S3_MIRROR"):
            Mirror.parse(bad)
