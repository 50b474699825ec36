"""`python -m worker` with `gpus: 2` on the CPU: two real ranks (gloo), the tiny model, a local spec.

Context parallelism itself needs GPUs (diffusers 0.42.1 places ranks by accelerator count), so here each
rank renders the whole sequence; the launch, process group, shared decisions, rank-0-only writes,
barriers and exit codes are the real ones.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

from worker.__main__ import main

from tests.worker.conftest import RUN_ID, make_item, make_spec
from wanbatch import layout
from wanbatch.manifest import Manifest

REPO = Path(__file__).resolve().parents[2]


def write_spec(folder: Path, model_dir: Path, *, gpus: int) -> Path:
    folder.mkdir(parents=True)
    spec = make_spec(model_dir, [make_item(id="a", steps=3)])
    spec["gpus"] = gpus
    path = folder / "spec.json"
    path.write_text(json.dumps(spec))
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def log_events(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith('{"ts"')]


def test_two_ranks_write_one_video_equal_to_the_single_process_one(worker_env, tiny_model_dir, tmp_path):
    one = write_spec(tmp_path / "one", tiny_model_dir, gpus=1)
    worker_env.setenv("SPEC_URI", str(one))
    assert main() == 0

    two = write_spec(tmp_path / "two", tiny_model_dir, gpus=2)
    env = {**os.environ, "SPEC_URI": str(two), "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'batch_image'}"}
    done = subprocess.run(
        [sys.executable, "-m", "worker"], env=env, cwd=REPO / "batch_image", capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    events = log_events(done.stdout)
    assert [e["exit_codes"] for e in events if e["event"] == "ranks_ended"] == [[0, 0]]
    starts = {e["rank"]: e["world_size"] for e in events if e["event"] == "job_start"}
    assert starts == {0: 2, 1: 2}
    assert {e["backend"] for e in events if e["event"] == "process_group"} == {"gloo"}
    # Both ranks rendered; only rank 0 decoded, published, and wrote progress; nobody failed.
    assert len([e for e in events if e["event"] == "render_stats"]) == 2
    assert len([e for e in events if e["event"] == "item_done"]) == 1
    assert not [e for e in events if e["event"] in ("item_failed", "job_failed")]

    assert sha256(two.parent / "a.mp4") == sha256(one.parent / "a.mp4")
    assert sorted(p.name for p in two.parent.iterdir()) == [
        "a.manifest.json",
        "a.mp4",
        "a.progress.json",
        "spec.json",
    ]  # fmt: skip  (no resume/ left, no stray temp files from a second writer)
    manifest = Manifest.model_validate_json((two.parent / "a.manifest.json").read_text())
    assert (manifest.runtime.gpus, manifest.runtime.context_parallel) == (2, None)  # CPU: no CP
    assert manifest.output.sha256 == sha256(two.parent / "a.mp4")
    assert json.loads((two.parent / "a.progress.json").read_text())["state"] == "done"


def test_a_rank_launched_for_another_gpu_count_exits_64(worker_env, tiny_model_dir, tmp_path):
    spec = write_spec(tmp_path / "run", tiny_model_dir, gpus=2)
    worker_env.setenv("SPEC_URI", str(spec))
    for name, value in (("WORLD_SIZE", "4"), ("RANK", "1"), ("LOCAL_RANK", "1")):
        worker_env.setenv(name, value)
    assert main() == 64
    record_path = spec.parent / Path(layout.child_error_key(RUN_ID, 0)).name
    assert not record_path.exists()  # rank 1 writes no record

    worker_env.setenv("RANK", "0")
    worker_env.setenv("LOCAL_RANK", "0")
    assert main() == 64
    record = json.loads(record_path.read_text())
    assert record["exit_code"] == 64 and "disagree" in record["message"]
