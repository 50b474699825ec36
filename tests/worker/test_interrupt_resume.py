"""A real `python -m worker` process, SIGTERMed or SIGKILLed mid-render, resumes to the same video.

The worker runs on a local spec (outputs and resume state in the spec's folder), so no S3 server is
needed. WANBATCH_TEST_STEP_DELAY (seconds slept after each step; tests only) makes the kill land mid-run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from worker.video import read_frames

from tests.worker.conftest import make_item, make_spec

ROOT = Path(__file__).resolve().parents[2]
ITEM = make_item(id="clip", steps=6)  # boundary after step 4: a kill can land on either side


def start_worker(run_dir: Path, model_dir: Path, attempt: int, delay: float = 0.0) -> subprocess.Popen:
    spec_path = run_dir / "spec.json"
    if not spec_path.exists():
        run_dir.mkdir(parents=True)
        spec_path.write_text(json.dumps(make_spec(model_dir, [ITEM])))
    env = {
        **os.environ,
        "SPEC_URI": str(spec_path),
        "AWS_BATCH_JOB_ATTEMPT": str(attempt),
        "AWS_EC2_METADATA_DISABLED": "true",
        "MODEL_CACHE_DIR": str(run_dir.parent / "model-cache"),
        "PROGRESS_EVERY_STEPS": "1",
        "WANBATCH_TEST_STEP_DELAY": str(delay),
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "batch_image")]),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "worker"], env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )


def wait_for_step(run_dir: Path, proc: subprocess.Popen, at_least: int, timeout: float = 120.0) -> int:
    """Block until the worker reports (and so has saved) `at_least` steps; returns the step seen."""
    progress = run_dir / f"{ITEM.id}.progress.json"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read().decode()
        try:
            step = json.loads(progress.read_text()).get("step", 0)
        except (FileNotFoundError, ValueError):
            step = 0
        if step >= at_least:
            return step
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"worker did not reach step {at_least} in {timeout} s")


def finish(proc: subprocess.Popen) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=180)
    return proc.returncode, out.decode()


@pytest.fixture(scope="module")
def baseline(tiny_model_dir, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("baseline") / "run"
    code, out = finish(start_worker(run_dir, tiny_model_dir, attempt=1))
    assert code == 0, out
    return run_dir / f"{ITEM.id}.mp4"


def assert_same_video(resumed: Path, baseline: Path) -> None:
    assert (read_frames(resumed) == read_frames(baseline)).all()
    assert resumed.read_bytes() == baseline.read_bytes()


def test_sigterm_mid_run_exits_75_and_the_retry_resumes_to_the_same_video(tiny_model_dir, tmp_path, baseline):
    run_dir = tmp_path / "run"
    proc = start_worker(run_dir, tiny_model_dir, attempt=1, delay=0.5)
    wait_for_step(run_dir, proc, at_least=2)
    proc.send_signal(signal.SIGTERM)
    code, out = finish(proc)
    assert code == 75, out
    assert not (run_dir / f"{ITEM.id}.error.json").exists()  # retryable: no error record
    interrupted = json.loads((run_dir / f"{ITEM.id}.progress.json").read_text())
    assert interrupted["state"] == "interrupted" and "sigterm" in interrupted["reason"]
    assert (run_dir / "resume" / ITEM.id / "state.pt").exists()

    code, out = finish(start_worker(run_dir, tiny_model_dir, attempt=2))
    assert code == 0, out
    assert_same_video(run_dir / f"{ITEM.id}.mp4", baseline)
    manifest = json.loads((run_dir / f"{ITEM.id}.manifest.json").read_text())
    attempts = [(a["attempt"], a["start_step"]) for a in manifest["attempts"]]
    assert attempts[0] == (1, 0) and attempts[1][0] == 2 and attempts[1][1] >= 2
    assert not (run_dir / "resume" / ITEM.id / "state.pt").exists()  # deleted after success


def test_sigkill_mid_run_loses_at_most_a_step_and_the_retry_resumes_to_the_same_video(
    tiny_model_dir, tmp_path, baseline
):
    run_dir = tmp_path / "run"
    proc = start_worker(run_dir, tiny_model_dir, attempt=1, delay=0.5)
    seen = wait_for_step(run_dir, proc, at_least=5)  # past the expert boundary
    proc.kill()  # a Spot reclaim: no signal handler runs
    proc.wait(timeout=30)

    code, out = finish(start_worker(run_dir, tiny_model_dir, attempt=2))
    assert code == 0, out
    assert_same_video(run_dir / f"{ITEM.id}.mp4", baseline)
    manifest = json.loads((run_dir / f"{ITEM.id}.manifest.json").read_text())
    assert manifest["attempts"][1]["start_step"] >= seen  # per-step saves: nothing before `seen` is redone
