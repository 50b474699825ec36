"""The checkpoint cache through the real huggingface_hub download path, against a fake hub on 127.0.0.1."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import signal
import threading
import time
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
from hub_fake import FakeHub, FakeRepo, diffusers_like_files, fill_in_child
from safetensors import safe_open
from safetensors.torch import load
from worker import checkpoint_download, checkpoint_hub
from worker.checkpoints import ResolvedModel, ensure_model, sha256_file

from wanbatch.errors import ModelSourceError, TransientError

REPO_ID = "wan-test/tiny-wan"
COMMIT = "c0ffee" + "0" * 34
SHARD1 = "transformer/diffusion_pytorch_model-00001-of-00002.safetensors"
SHARD2 = "transformer/diffusion_pytorch_model-00002-of-00002.safetensors"
INDEX = "transformer/diffusion_pytorch_model.safetensors.index.json"
EXPERT2 = "transformer_2/diffusion_pytorch_model.safetensors"
VAE = "vae/diffusion_pytorch_model.safetensors"
TEXT_ENCODER = "text_encoder/model.safetensors"
CONVERTED = {SHARD1, SHARD2, INDEX, EXPERT2}


@pytest.fixture
def repo() -> FakeRepo:
    return FakeRepo(REPO_ID, diffusers_like_files(), commit=COMMIT)


@pytest.fixture
def hub(repo: FakeRepo, monkeypatch: pytest.MonkeyPatch):
    with FakeHub(repo) as fake:
        monkeypatch.setenv("HF_ENDPOINT", fake.url)
        monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        # Small chunks, so a broken or killed transfer leaves partial bytes on disk as a big file would.
        monkeypatch.setattr(checkpoint_download, "CHUNK", 1024)
        yield fake


def fill(cache: Path, revision: str = "main", repo_id: str = REPO_ID) -> ResolvedModel:
    return ensure_model(repo_id, revision, cache_dir=cache)


def commit_dir(cache: Path, commit: str = COMMIT) -> Path:
    return cache / "models--wan-test--tiny-wan" / commit


# --- download once, marker, hashes, conversion ----------------------------------------------------


def test_first_call_downloads_converts_and_marks_the_cache(hub: FakeHub, repo: FakeRepo, tmp_path: Path):
    resolved = fill(tmp_path)

    assert resolved.source == "hub" and resolved.commit == COMMIT and resolved.revision == "main"
    assert resolved.path == commit_dir(tmp_path) / "model"
    assert (resolved.path / "model_index.json").is_file()
    marker = json.loads((commit_dir(tmp_path) / ".complete").read_text())
    assert marker["commit"] == COMMIT and marker["files"] == len(repo.files)
    assert not (commit_dir(tmp_path) / "download").exists(), "the fp32 download is removed once converted"
    assert {f.path for f in resolved.files} == set(repo.files)
    assert len(hub.file_gets()) == len(repo.files), "each file is fetched exactly once"


def test_recorded_hashes_match_the_files_and_the_sources(hub: FakeHub, repo: FakeRepo, tmp_path: Path):
    resolved = fill(tmp_path)

    for f in resolved.files:
        on_disk = resolved.path / f.path
        assert f.sha256 == sha256_file(on_disk) and f.bytes == on_disk.stat().st_size, f.path
        served = hashlib.sha256(repo.files[f.path]).hexdigest()
        if f.path in CONVERTED:
            assert f.source_sha256 == served and f.sha256 != served, f.path
        else:
            assert f.source_sha256 is None and f.sha256 == served, f.path
    sidecar = json.loads((commit_dir(tmp_path) / "sha256.json").read_text())
    assert [f.to_dict() for f in resolved.files] == sidecar["files"]


def test_experts_are_stored_as_bf16_equal_to_the_cast_fp32(hub: FakeHub, repo: FakeRepo, tmp_path: Path):
    resolved = fill(tmp_path)

    for rel in (SHARD1, SHARD2, EXPERT2):
        original = load(repo.files[rel])
        with safe_open(resolved.path / rel, framework="pt") as f:
            assert sorted(f.keys()) == sorted(original)
            for name, tensor in original.items():
                stored = f.get_tensor(name)
                if tensor.is_floating_point():
                    assert stored.dtype == torch.bfloat16
                    assert torch.equal(stored, tensor.to(torch.bfloat16))
                else:
                    assert stored.dtype == tensor.dtype and torch.equal(stored, tensor)
    index = json.loads((resolved.path / INDEX).read_text())
    original_index = json.loads(repo.files[INDEX])
    assert index["weight_map"] == original_index["weight_map"]
    tensors = load((resolved.path / SHARD1).read_bytes()) | load((resolved.path / SHARD2).read_bytes())
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in tensors.values())
    assert index["metadata"]["total_size"] < original_index["metadata"]["total_size"]
    # The VAE stays fp32 and the (already bf16) text encoder is kept byte for byte.
    assert load((resolved.path / VAE).read_bytes())["conv.weight"].dtype == torch.float32
    assert (resolved.path / TEXT_ENCODER).read_bytes() == repo.files[TEXT_ENCODER]


def test_second_call_reads_the_marker_and_requests_no_files(hub: FakeHub, tmp_path: Path, monkeypatch):
    first = fill(tmp_path)
    before = len(hub.hits)
    monkeypatch.setattr(checkpoint_hub, "sha256_file", _forbidden)  # a completed cache is never re-hashed

    again = fill(tmp_path)
    by_commit = fill(tmp_path, revision=COMMIT)

    assert again.files == first.files == by_commit.files and again.path == first.path
    new_hits = hub.hits[before:]
    assert [h.path for h in new_hits] == [f"/api/models/{REPO_ID}/revision/main"], (
        "only the branch is resolved"
    )


def _forbidden(*args, **kwargs):
    raise AssertionError("a completed cache must not be re-hashed")


# --- revisions ------------------------------------------------------------------------------------


def test_a_branch_resolves_to_its_commit_and_is_recorded(hub: FakeHub, repo: FakeRepo, tmp_path: Path):
    resolved = fill(tmp_path, revision="main")
    ref = tmp_path / "models--wan-test--tiny-wan" / "refs" / "main"
    assert resolved.commit == COMMIT and ref.read_text() == COMMIT

    moved = "beef" + "1" * 36
    repo.branches["main"] = moved
    repo.commit = moved  # the branch moved on the hub: the next job fills the new commit
    newer = fill(tmp_path, revision="main")
    assert newer.commit == moved and ref.read_text() == moved
    assert newer.path == commit_dir(tmp_path, moved) / "model" and first_path_kept(tmp_path)


def first_path_kept(cache: Path) -> bool:
    return (commit_dir(cache) / ".complete").is_file()


def test_offline_reuses_a_completed_cache(repo: FakeRepo, tmp_path: Path, monkeypatch):
    with FakeHub(repo) as fake:
        monkeypatch.setenv("HF_ENDPOINT", fake.url)
        filled = fill(tmp_path)
    # The hub is gone now: a branch falls back to the recorded ref, a commit needs no network at all.
    assert fill(tmp_path, revision="main").files == filled.files
    assert fill(tmp_path, revision=COMMIT).files == filled.files
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    assert fill(tmp_path, revision="main").path == filled.path


def test_hub_unreachable_without_a_cache_is_transient(repo: FakeRepo, tmp_path: Path, monkeypatch):
    with FakeHub(repo) as fake:
        url = fake.url
    monkeypatch.setenv("HF_ENDPOINT", url)
    with pytest.raises(TransientError, match="unreachable"):
        fill(tmp_path)


def test_missing_repo_or_revision_is_a_clear_error(hub: FakeHub, tmp_path: Path):
    with pytest.raises(ModelSourceError, match="not found on the hub") as missing:
        fill(tmp_path, repo_id="wan-test/no-such-model")
    assert missing.value.repo_id == "wan-test/no-such-model"
    with pytest.raises(ModelSourceError, match="revision 'nope' does not exist"):
        fill(tmp_path, revision="nope")


# --- resume ---------------------------------------------------------------------------------------


def test_a_dropped_connection_resumes_with_a_range_request(hub: FakeHub, repo: FakeRepo, tmp_path: Path):
    hub.drop_once.add(SHARD2)

    resolved = fill(tmp_path)

    gets = hub.file_gets(SHARD2)
    assert len(gets) == 2 and gets[0].range is None
    assert 0 < int(gets[1].range[6:-1]) <= len(repo.files[SHARD2]) // 2, (
        "the second GET continues where it broke"
    )
    entry = next(f for f in resolved.files if f.path == SHARD2)
    assert entry.source_sha256 == hashlib.sha256(repo.files[SHARD2]).hexdigest()


def test_a_killed_download_is_resumed_by_the_next_job(hub: FakeHub, repo: FakeRepo, tmp_path: Path):
    big = bytes(range(256)) * 2048  # 512 KiB at 1 KiB / 20 ms: ~10 s in which to kill the child
    repo.files["vae/big.bin"] = big
    hub.slow["vae/big.bin"] = 0.02
    child = multiprocessing.get_context("fork").Process(
        target=fill_in_child, args=(REPO_ID, COMMIT, str(tmp_path), hub.url)
    )
    child.start()
    partial = _wait_for_partial(commit_dir(tmp_path) / "download", min_bytes=8 << 10, timeout=60)
    os.kill(child.pid, signal.SIGKILL)
    child.join()
    assert not (commit_dir(tmp_path) / ".complete").exists()
    hub.slow.clear()

    resolved = fill(tmp_path, revision=COMMIT)  # the dead holder's lock is taken over at once (same host)

    gets = hub.file_gets("vae/big.bin")
    assert gets[-1].range is not None and int(gets[-1].range[6:-1]) >= partial, f"restarted: {gets}"
    assert (resolved.path / "vae/big.bin").read_bytes() == big


def _wait_for_partial(download: Path, *, min_bytes: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for part in download.rglob("*.part") if download.is_dir() else ():
            try:
                if part.name.startswith("big.bin") and (size := part.stat().st_size) >= min_bytes:
                    return size
            except FileNotFoundError:  # another file's .part was renamed as we looked
                continue
        time.sleep(0.02)
    raise AssertionError("the child never started the slow download")


def test_a_fill_that_died_while_converting_is_resumed_without_downloading_again(
    hub: FakeHub, repo: FakeRepo, tmp_path: Path, monkeypatch
):
    real_verify = checkpoint_hub.convert.verify_shard

    def dies_on_second_shard(src: Path, dst: Path) -> None:
        if dst.name == Path(SHARD2).name:
            raise KeyboardInterrupt("killed while converting")
        real_verify(src, dst)

    monkeypatch.setattr(checkpoint_hub.convert, "verify_shard", dies_on_second_shard)
    with pytest.raises(KeyboardInterrupt):
        fill(tmp_path)
    assert not (commit_dir(tmp_path) / ".complete").exists() and (commit_dir(tmp_path) / "fill.json").exists()
    downloads = len(hub.file_gets())
    monkeypatch.setattr(checkpoint_hub.convert, "verify_shard", real_verify)

    resolved = fill(tmp_path)

    assert len(hub.file_gets()) == downloads, "the finished download is not fetched again"
    assert {f.path for f in resolved.files} == set(repo.files)
    for f in resolved.files:
        assert f.sha256 == sha256_file(resolved.path / f.path)


# --- one downloader at a time ---------------------------------------------------------------------


def test_concurrent_threads_download_once_and_share_the_result(hub: FakeHub, repo: FakeRepo, tmp_path: Path):
    hub.slow[SHARD1] = 0.005  # keep the first filler busy while the others arrive
    results: list[ResolvedModel] = []
    errors: list[BaseException] = []

    def call() -> None:
        try:
            results.append(fill(tmp_path))
        except BaseException as exc:  # noqa: B036 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)

    assert not errors and len(results) == 4
    assert all(r.files == results[0].files and r.path == results[0].path for r in results)
    assert len(hub.file_gets()) == len(repo.files), "one downloader; the others waited and reused"


def test_concurrent_processes_download_once_and_share_the_result(
    hub: FakeHub, repo: FakeRepo, tmp_path: Path
):
    hub.slow[SHARD1] = 0.005
    ctx = multiprocessing.get_context("fork")  # like jobs on other instances, minus re-importing torch
    outs = [tmp_path / f"out{i}.json" for i in range(2)]
    cache = str(tmp_path / "cache")
    procs = [
        ctx.Process(target=fill_in_child, args=(REPO_ID, "main", cache, hub.url, str(out))) for out in outs
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)

    assert [p.exitcode for p in procs] == [0, 0]
    recorded = [json.loads(out.read_text()) for out in outs]
    assert recorded[0] == recorded[1] and len(recorded[0]) == len(repo.files)
    assert len(hub.file_gets()) == len(repo.files)


def test_a_lease_left_by_a_dead_instance_is_taken_over(hub: FakeHub, tmp_path: Path, monkeypatch):
    monkeypatch.setattr(checkpoint_hub, "LEASE_SECONDS", 1.0)
    lock = tmp_path / "models--wan-test--tiny-wan" / f"{COMMIT}.lock"
    lock.parent.mkdir(parents=True)
    # A marker written by a holder on another host that stopped refreshing it (a reclaimed Spot instance).
    lock.write_text("filelock/2\npid=4242\nhost=ip-10-0-0-9\nmode=lease\ntoken=ab12\nduration=1.0\nstart=1\n")

    started = time.monotonic()
    resolved = fill(tmp_path, revision=COMMIT)

    assert resolved.commit == COMMIT and time.monotonic() - started < 30
    assert not lock.exists(), "the lock is released after the fill"
