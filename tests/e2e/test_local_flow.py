"""The whole flow on one machine, as `make demo` runs it: moto S3/Batch/DynamoDB, the real submit handler,
the local executor running `python -m worker` children, the tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import imageio.v3 as iio
import pytest

from wanbatch.local.flow import run_local_flow

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def flow_result(tmp_path_factory: pytest.TempPathFactory):
    from worker.tiny_model import ensure_tiny_model

    root = tmp_path_factory.mktemp("flow")
    model_dir = ensure_tiny_model(root / "tiny-wan")
    return run_local_flow(REPO / "examples" / "demo_prompts.json", model_dir=model_dir,
                          cache_dir=root / "models", outputs=root / "outputs", say=lambda _: None)


def test_demo_flow_leaves_two_videos_and_manifests_in_one_run_folder(flow_result) -> None:
    logs = [child.log[-800:] for child in flow_result.children]
    assert [child.exit_code for child in flow_result.children] == [0, 0], logs
    assert flow_result.errors == []
    assert sorted(p.name for p in flow_result.videos) == ["cat.mp4", "p0000.mp4"]
    assert sorted(p.name for p in flow_result.manifests) == ["cat.manifest.json", "p0000.manifest.json"]
    assert {p.parent for p in flow_result.videos + flow_result.manifests} == {flow_result.output_dir}
    assert flow_result.output_dir.name == flow_result.run_id
    assert flow_result.job_name == f"wan-{flow_result.run_id}"


def test_demo_flow_videos_match_the_resolved_spec(flow_result) -> None:
    prompts = json.loads((REPO / "examples" / "demo_prompts.json").read_text())
    for manifest_path in flow_result.manifests:
        manifest = json.loads(manifest_path.read_text())
        video = manifest_path.with_name(manifest_path.name.replace(".manifest.json", ".mp4"))
        frames = iio.imread(video, plugin="pyav")
        assert frames.shape[0] == prompts["defaults"]["num_frames"]
        assert (frames.shape[2], frames.shape[1]) == (832, 480)
        assert manifest["run_id"] == flow_result.run_id
        assert manifest["steps"] == prompts["defaults"]["steps"]
    manifests = [json.loads(p.read_text()) for p in flow_result.manifests]
    seeds = {manifest["item_id"]: manifest["seed"] for manifest in manifests}
    assert seeds["cat"] == 7  # the file's explicit seed wins; p0000's is derived from the run id
