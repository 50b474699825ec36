"""`make demo`: the example spec renders with the tiny model into outputs/<run_id>/."""

from __future__ import annotations

import json
from pathlib import Path

from worker.video import probe

from wanbatch.demo import TINY_SENTINEL, resolved_spec, run_demo
from wanbatch.spec import parse_spec

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "demo_spec.json"


def test_the_example_is_a_valid_spec_naming_the_tiny_model_sentinel(tmp_path):
    spec = parse_spec(EXAMPLE.read_bytes())
    assert spec.model.id == TINY_SENTINEL and len(spec.items) == 2
    assert resolved_spec(EXAMPLE, tmp_path)["model"]["id"] == str(tmp_path)


def test_demo_leaves_videos_and_manifests(tmp_path, tiny_model_dir):
    run_dir = run_demo(example=EXAMPLE, outputs=tmp_path / "outputs", cache=tiny_model_dir)
    spec = json.loads((run_dir / "spec.json").read_text())
    for item in spec["items"]:
        info = probe(run_dir / f"{item['id']}.mp4")
        assert (info.frame_count, info.width, info.height) == (
            item["num_frames"],
            item["width"],
            item["height"],
        )
        assert json.loads((run_dir / f"{item['id']}.manifest.json").read_text())["item_id"] == item["id"]
