"""ensure_model with a local Diffusers folder, bad model references, the cache-fill entry, and the NVMe tier
reached through ensure_model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hub_fake import FakeHub, FakeRepo, diffusers_like_files
from worker import checkpoints
from worker.checkpoints import ensure_model, is_local_ref, sha256_file
from worker.warm import parse_model_ref, run_warm

from wanbatch.errors import ConfigError, ModelSourceError


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    root = tmp_path / "my-model"
    for rel, data in diffusers_like_files(seed=3).items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def test_a_local_folder_is_used_in_place_with_hashes(model_dir: Path, tmp_path: Path):
    resolved = ensure_model(str(model_dir), "main", cache_dir=tmp_path / "cache")

    assert resolved.path == model_dir and resolved.source == "local" and resolved.commit is None
    assert {f.path for f in resolved.files} == set(diffusers_like_files(seed=3))
    for f in resolved.files:
        assert f.sha256 == sha256_file(model_dir / f.path) and f.source_sha256 is None


def test_a_local_folder_is_hashed_once_until_it_changes(model_dir: Path, tmp_path: Path, monkeypatch):
    first = ensure_model(str(model_dir), "main", cache_dir=tmp_path / "cache")
    calls: list[Path] = []
    real = checkpoints.sha256_file
    monkeypatch.setattr(checkpoints, "sha256_file", lambda p: calls.append(p) or real(p))

    assert ensure_model(str(model_dir), "main", cache_dir=tmp_path / "cache").files == first.files
    assert calls == [], "unchanged files are not re-read"
    (model_dir / "vae" / "config.json").write_text('{"changed": true}')
    changed = ensure_model(str(model_dir), "main", cache_dir=tmp_path / "cache")
    assert calls == [model_dir / "vae" / "config.json"]
    assert changed.files != first.files


def test_missing_or_invalid_local_folders_are_clear_errors(tmp_path: Path):
    with pytest.raises(ModelSourceError, match="does not exist") as missing:
        ensure_model(str(tmp_path / "nope"), "main", cache_dir=tmp_path)
    assert missing.value.repo_id == str(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelSourceError, match="model_index.json is missing"):
        ensure_model(str(tmp_path / "empty"), "main", cache_dir=tmp_path)


@pytest.mark.parametrize(
    ("ref", "local"),
    [("Wan-AI/Wan2.2-T2V-A14B-Diffusers", False), ("/models/wan", True), ("./wan", True), ("a/b/c", True)],
)
def test_hub_ids_and_paths_are_told_apart(ref: str, local: bool):
    assert is_local_ref(ref) is local


def test_warm_model_reference_parsing():
    assert parse_model_ref("Wan-AI/Wan2.2-T2V-A14B-Diffusers@abc123") == (
        "Wan-AI/Wan2.2-T2V-A14B-Diffusers",
        "abc123",
    )
    assert parse_model_ref("org/name") == ("org/name", "main")
    with pytest.raises(ConfigError, match="WARM_MODEL"):
        parse_model_ref("org/name@")


def test_run_warm_fills_the_cache_and_returns_0(tmp_path: Path, monkeypatch):
    repo = FakeRepo("org/warm", diffusers_like_files(seed=5))
    with FakeHub(repo) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.setenv("MODEL_CACHE_DIR", str(tmp_path / "efs"))
        assert run_warm("org/warm@main") == 0
        assert len(hub.file_gets()) == len(repo.files)
    marker = tmp_path / "efs" / "models--org--warm" / repo.commit / ".complete"
    assert json.loads(marker.read_text())["commit"] == repo.commit


def test_a_hub_model_is_promoted_to_the_local_tier(tmp_path: Path, monkeypatch):
    repo = FakeRepo("org/tiered", diffusers_like_files(seed=6))
    nvme = tmp_path / "nvme"
    nvme.mkdir()
    monkeypatch.setattr("worker.local_tier.DEFAULT_MIN_FREE_BYTES", 0)
    with FakeHub(repo) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        resolved = ensure_model("org/tiered", "main", cache_dir=tmp_path / "efs", local_cache_dir=nvme)

    assert resolved.path == nvme / f"models--org--tiered--{repo.commit}" / "model"
    assert resolved.source == "hub" and resolved.commit == repo.commit and resolved.fetch_seconds > 0
    for f in resolved.files:
        assert sha256_file(resolved.path / f.path) == f.sha256
