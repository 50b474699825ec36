"""The NVMe tier: copy once, verify, concurrent callers, LRU eviction, fallback to EFS."""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import threading
import time
from collections import namedtuple
from dataclasses import replace
from pathlib import Path

import pytest
from worker import local_tier
from worker.checkpoints import ResolvedModel, hash_tree
from worker.local_tier import promote

from wanbatch.errors import ModelSourceError

COMMIT = "1" * 40


def efs_model(root: Path, commit: str = COMMIT, size: int = 64 << 10) -> ResolvedModel:
    """A completed EFS cache entry as ensure_model returns it (files and their recorded hashes)."""
    model = root / f"efs-{commit[:6]}" / "model"
    (model / "transformer").mkdir(parents=True)
    (model / "model_index.json").write_text('{"_class_name": "WanPipeline"}')
    (model / "transformer" / "a.safetensors").write_bytes(os.urandom(size))
    (model / "transformer" / "b.safetensors").write_bytes(os.urandom(size))
    return ResolvedModel(model, "org/model", "main", commit, hash_tree(model), "hub", 0.0)


@pytest.fixture
def nvme(tmp_path: Path) -> Path:
    path = tmp_path / "nvme"
    path.mkdir()
    return path


def test_first_use_copies_and_verifies_later_uses_reuse(tmp_path: Path, nvme: Path, monkeypatch):
    resolved = efs_model(tmp_path)

    local = promote(resolved, nvme, min_free_bytes=0)

    assert local.path == nvme / f"models--org--model--{COMMIT}" / "model" and local.files == resolved.files
    for f in resolved.files:
        assert (local.path / f.path).read_bytes() == (resolved.path / f.path).read_bytes()
    assert (local.path.parent / ".complete").is_file()
    monkeypatch.setattr(local_tier, "_copy_file", _forbidden)
    assert promote(resolved, nvme, min_free_bytes=0).path == local.path, "the second job copies nothing"


def _forbidden(*args, **kwargs):
    raise AssertionError("copied again")


def test_a_file_that_differs_from_the_recorded_hash_is_refused(tmp_path: Path, nvme: Path):
    resolved = efs_model(tmp_path)
    (resolved.path / "transformer" / "b.safetensors").write_bytes(b"bit rot")

    with pytest.raises(ModelSourceError, match="EFS cache is corrupt"):
        promote(resolved, nvme, min_free_bytes=0)
    assert not (nvme / f"models--org--model--{COMMIT}" / ".complete").exists()


def test_an_interrupted_copy_is_redone(tmp_path: Path, nvme: Path):
    resolved = efs_model(tmp_path)
    partial = nvme / f"models--org--model--{COMMIT}" / "model" / "transformer"
    partial.mkdir(parents=True)
    (partial / "a.safetensors").write_bytes(b"half")  # no marker: a container died mid-copy

    local = promote(resolved, nvme, min_free_bytes=0)

    assert (local.path / "transformer" / "a.safetensors").read_bytes() == (
        resolved.path / "transformer" / "a.safetensors"
    ).read_bytes()


def test_concurrent_threads_copy_once(tmp_path: Path, nvme: Path, monkeypatch):
    resolved = efs_model(tmp_path)
    copies: list[str] = []
    real_copy = local_tier._copy_file

    def counting_copy(src, dst, expected):
        copies.append(expected.path)
        time.sleep(0.05)
        real_copy(src, dst, expected)

    monkeypatch.setattr(local_tier, "_copy_file", counting_copy)
    results: list[ResolvedModel] = []
    threads = [threading.Thread(target=lambda: results.append(promote(resolved, nvme, min_free_bytes=0)))
               for _ in range(4)]  # fmt: skip
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)

    assert len(results) == 4 and {r.path for r in results} == {results[0].path}
    assert sorted(copies) == sorted(f.path for f in resolved.files), "each file copied exactly once"


def _promote_in_child(resolved: ResolvedModel, nvme: str, out: str) -> None:
    Path(out).write_text(str(promote(resolved, Path(nvme), min_free_bytes=0).path))


def test_concurrent_containers_on_one_instance_copy_once(tmp_path: Path, nvme: Path):
    resolved = efs_model(tmp_path, size=4 << 20)
    ctx = multiprocessing.get_context("fork")  # two containers racing on the same NVMe folder
    outs = [tmp_path / f"out{i}" for i in range(2)]
    procs = [ctx.Process(target=_promote_in_child, args=(resolved, str(nvme), str(o))) for o in outs]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)

    assert [p.exitcode for p in procs] == [0, 0]
    assert outs[0].read_text() == outs[1].read_text() == str(nvme / f"models--org--model--{COMMIT}" / "model")
    marker = (nvme / f"models--org--model--{COMMIT}" / ".complete").read_text()
    assert '"files": 3' in marker
    leftovers = [p for p in nvme.rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == [], "no half-written files from the loser of the race"


Usage = namedtuple("Usage", "total used free")


def fake_disk(monkeypatch, nvme: Path, capacity: int) -> None:
    """An NVMe of `capacity` bytes: free space is capacity minus what the tier holds."""

    def usage(path) -> Usage:
        used = sum(p.stat().st_size for p in nvme.rglob("*") if p.is_file())
        return Usage(capacity, used, capacity - used)

    monkeypatch.setattr(local_tier.shutil, "disk_usage", usage)


def test_least_recently_used_revisions_are_evicted_when_space_is_short(
    tmp_path: Path, nvme: Path, monkeypatch
):
    monkeypatch.setattr(local_tier, "IN_USE_GRACE_S", 0.0)
    old, recent, new = (efs_model(tmp_path, c * 40) for c in "abc")
    size = sum(f.bytes for f in old.files)
    fake_disk(monkeypatch, nvme, capacity=int(size * 2.5))  # room for two revisions
    promote(old, nvme, min_free_bytes=0)
    promote(recent, nvme, min_free_bytes=0)
    past = time.time() - 1000
    os.utime(nvme / f"models--org--model--{'a' * 40}" / ".complete", (past, past))

    promote(new, nvme, min_free_bytes=0)

    names = sorted(p.name for p in nvme.iterdir() if p.is_dir())
    assert names == [f"models--org--model--{'b' * 40}", f"models--org--model--{'c' * 40}"]


def test_a_revision_in_use_is_not_evicted(tmp_path: Path, nvme: Path, monkeypatch, caplog):
    busy, new = efs_model(tmp_path, "a" * 40), efs_model(tmp_path, "b" * 40)
    fake_disk(monkeypatch, nvme, capacity=int(sum(f.bytes for f in busy.files) * 1.5))
    promote(busy, nvme, min_free_bytes=0)  # just used: within IN_USE_GRACE_S

    with caplog.at_level(logging.WARNING, logger="worker.checkpoints"):
        result = promote(new, nvme, min_free_bytes=0)

    assert result.path == new.path, "falls back to EFS"
    assert (nvme / f"models--org--model--{'a' * 40}" / ".complete").is_file()
    assert "too small" in caplog.text


def test_falls_back_to_efs_without_a_usable_tier(tmp_path: Path, nvme: Path, monkeypatch, caplog):
    resolved = efs_model(tmp_path)
    with caplog.at_level(logging.WARNING, logger="worker.checkpoints"):
        assert promote(resolved, None) == resolved
        assert promote(resolved, tmp_path / "no-such-dir") == resolved
        fake_disk(monkeypatch, nvme, capacity=1000)
        assert promote(resolved, nvme, min_free_bytes=0) == resolved
    assert caplog.text.count("reading the model from EFS") == 3
    assert [p for p in nvme.iterdir() if p.is_dir()] == [], "nothing copied"


def test_a_plain_local_folder_is_not_copied(tmp_path: Path, nvme: Path):
    resolved = replace(efs_model(tmp_path), commit=None, source="local")
    assert promote(resolved, nvme) is resolved
    shutil.rmtree(nvme)
