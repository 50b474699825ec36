"""The worker end to end against moto S3: videos, manifests, skips, error records and exit codes."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from botocore.exceptions import ClientError
from worker.__main__ import main
from worker.video import probe, read_frames

from tests.worker.conftest import BUCKET, RUN_ID, keys, make_item, make_spec, put_spec, read_json
from wanbatch import layout
from wanbatch.manifest import Manifest


def run_worker(env, spec_uri: str, index: int = 0, attempt: int = 1) -> int:
    env.setenv("SPEC_URI", spec_uri)
    env.setenv("AWS_BATCH_JOB_ARRAY_INDEX", str(index))
    env.setenv("AWS_BATCH_JOB_ATTEMPT", str(attempt))
    return main()


def events(capsys, name: str) -> list[dict]:
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    return [line for line in lines if line["event"] == name]


def download(s3, key: str, tmp_path: Path) -> Path:
    path = tmp_path / Path(key).name
    path.write_bytes(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())
    return path


def test_a_chunk_of_three_renders_videos_and_manifests_loading_the_model_once(
    s3, worker_env, tiny_model_dir, tmp_path, capsys
):
    items = [
        make_item(id="a", steps=2, fps=16),
        make_item(id="b", steps=2, fps=24, prompt="A serene lake at sunset", seed=3),
        make_item(id="twin", steps=2, fps=16),  # same settings and seed as "a"
    ]
    spec = make_spec(tiny_model_dir, items, items_per_job=3)
    assert run_worker(worker_env, put_spec(s3, spec)) == 0
    assert len(events(capsys, "model_loaded")) == 1

    for item in items:
        manifest = Manifest.model_validate(read_json(s3, layout.manifest_key(RUN_ID, item.id)))
        video = download(s3, manifest.output.key, tmp_path)
        info = probe(video)
        assert (info.frame_count, info.width, info.height) == (item.num_frames, item.width, item.height)
        assert (info.fps, info.codec, info.pix_fmt) == (item.fps, "h264", "yuv420p")
        assert manifest.output.sha256 == hashlib.sha256(video.read_bytes()).hexdigest()
        assert (manifest.output.frame_count, manifest.output.bytes) == (5, video.stat().st_size)
        assert (manifest.seed, manifest.flow_shift, manifest.boundary_ratio) == (item.seed, 12.0, 0.875)
        assert manifest.scheduler_config["flow_shift"] == item.flow_shift
        assert manifest.model.files and all(len(f.sha256) == 64 for f in manifest.model.files)
        assert manifest.runtime.dtype == {
            "transformer": "bfloat16",
            "transformer_2": "bfloat16",
            "text_encoder": "bfloat16",
            "vae": "float32",
        }
        assert manifest.attempts[0].attempt == 1 and manifest.attempts[0].start_step == 0
        assert len(manifest.timings.step_s) == 2 and manifest.timings.load_s > 0
        assert manifest.cost.items_sharing_setup == 3
        assert manifest.versions.torch.startswith("2.13.0")

    # Every contract-3 field is present in the JSON, explicitly (None where unknown off EC2).
    raw = read_json(s3, layout.manifest_key(RUN_ID, "a"))
    assert set(raw) == set(Manifest.model_fields)
    assert raw["hardware"]["instance_type"] is None and raw["cost"]["usd"] is None

    # The same seed and settings give bit-identical frames (and, with bit-exact encoding, the same file).
    a, twin = (download(s3, layout.video_key(RUN_ID, i), tmp_path) for i in ("a", "twin"))
    assert (read_frames(a) == read_frames(twin)).all()
    assert a.read_bytes() == twin.read_bytes()
    assert not any(k.startswith(layout.RESUME_PREFIX) or k.endswith(".error.json") for k in keys(s3))
    assert read_json(s3, layout.progress_key(RUN_ID, "a"))["state"] == "done"


def test_an_item_whose_manifest_exists_is_skipped_without_loading_the_model(
    s3, worker_env, tiny_model_dir, capsys
):
    spec = make_spec(tiny_model_dir, [make_item(id="done", steps=2)])
    s3.put_object(Bucket=BUCKET, Key=layout.manifest_key(RUN_ID, "done"), Body=b"{}")
    assert run_worker(worker_env, put_spec(s3, spec)) == 0
    assert layout.video_key(RUN_ID, "done") not in keys(s3)
    out = capsys.readouterr().out
    assert '"event": "skipped"' in out and '"event": "model_loaded"' not in out


def test_array_index_picks_the_childs_items(s3, worker_env, tiny_model_dir):
    spec = make_spec(
        tiny_model_dir, [make_item(id="first", steps=1), make_item(id="second", steps=1)], items_per_job=1
    )
    assert run_worker(worker_env, put_spec(s3, spec), index=1) == 0
    assert layout.manifest_key(RUN_ID, "second") in keys(s3)
    assert layout.manifest_key(RUN_ID, "first") not in keys(s3)


def test_an_invalid_spec_exits_64_with_an_error_record(s3, worker_env, tiny_model_dir):
    spec = make_spec(tiny_model_dir, [make_item()])
    spec["items"][0]["num_frames"] = 80  # not 4k+1
    assert run_worker(worker_env, put_spec(s3, spec)) == 64
    record = read_json(s3, layout.child_error_key(RUN_ID, 0))
    assert record["type"] == "SpecError" and "4k+1" in record["message"]
    assert record["exit_code"] == 64 and record["attempt"] == 1


def test_an_index_out_of_range_exits_64_with_an_error_record(s3, worker_env, tiny_model_dir):
    spec = make_spec(tiny_model_dir, [make_item()])
    assert run_worker(worker_env, put_spec(s3, spec), index=3) == 64
    assert "out of range" in read_json(s3, layout.child_error_key(RUN_ID, 3))["message"]


def test_a_failing_item_writes_its_error_record_and_exits_1_and_the_next_success_removes_it(
    s3, worker_env, tiny_model_dir, monkeypatch
):
    spec_uri = put_spec(s3, make_spec(tiny_model_dir, [make_item(id="x", steps=3)]))

    def broken_step(*args, **kwargs):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    import diffusers

    real_step = diffusers.UniPCMultistepScheduler.step
    calls = {"n": 0}

    def fail_on_second_step(self, *args, **kwargs):
        calls["n"] += 1
        return broken_step() if calls["n"] == 2 else real_step(self, *args, **kwargs)

    monkeypatch.setattr(diffusers.UniPCMultistepScheduler, "step", fail_on_second_step)
    assert run_worker(worker_env, spec_uri, attempt=1) == 1
    record = read_json(s3, layout.error_key(RUN_ID, "x"))
    assert record["type"] == "RuntimeError" and "illegal memory access" in record["message"]
    assert (record["step"], record["attempt"], record["exit_code"]) == (1, 1, 1)

    monkeypatch.setattr(diffusers.UniPCMultistepScheduler, "step", real_step)
    assert run_worker(worker_env, spec_uri, attempt=2) == 0
    assert layout.error_key(RUN_ID, "x") not in keys(s3)
    manifest = read_json(s3, layout.manifest_key(RUN_ID, "x"))
    # The failed attempt saved step 1, so the later one resumed there and says so.
    assert [(a["attempt"], a["start_step"]) for a in manifest["attempts"]] == [(1, 0), (2, 1)]


def test_a_missing_model_fails_every_item_with_a_record(s3, worker_env, tmp_path):
    spec_uri = put_spec(s3, make_spec(tmp_path / "no-such-model", [make_item(id="m1"), make_item(id="m2")]))
    assert run_worker(worker_env, spec_uri) == 1
    for item_id in ("m1", "m2"):
        assert read_json(s3, layout.error_key(RUN_ID, item_id))["type"] == "ModelSourceError"


def test_throttled_s3_exits_75_without_an_error_record(s3, worker_env, tiny_model_dir, monkeypatch):
    from botocore.client import BaseClient

    spec_uri = put_spec(s3, make_spec(tiny_model_dir, [make_item(id="slow", steps=1)]))
    real_call = BaseClient._make_api_call

    def throttle_videos(self, operation, params):
        if operation == "PutObject" and params["Key"].endswith(".mp4"):
            error = {"Error": {"Code": "SlowDown", "Message": "Please reduce your request rate."}}
            raise ClientError(error, operation)
        return real_call(self, operation, params)

    monkeypatch.setattr(BaseClient, "_make_api_call", throttle_videos)
    assert run_worker(worker_env, spec_uri) == 75
    names = keys(s3)
    assert layout.error_key(RUN_ID, "slow") not in names
    assert layout.manifest_key(RUN_ID, "slow") not in names
    assert read_json(s3, layout.progress_key(RUN_ID, "slow"))["state"] == "interrupted"
    # The finished denoising state is kept, so the retry goes straight to decode and upload.
    assert layout.resume_prefix(RUN_ID, "slow") + "state.pt" in names


@pytest.mark.parametrize("variable, value", [("AWS_BATCH_JOB_ARRAY_INDEX", "one"), ("OFFLOAD", "turbo")])
def test_bad_settings_exit_64(worker_env, tmp_path, variable, value):
    worker_env.setenv("SPEC_URI", str(tmp_path / "spec.json"))
    worker_env.setenv(variable, value)
    assert main() == 64


def test_a_stop_after_the_work_is_done_keeps_the_exit_code(
    s3, worker_env, tiny_model_dir, monkeypatch, capsys
):
    """Batch's SIGTERM can land while the job reports its end: the finished job still exits 0."""
    import os
    import signal

    import worker.__main__ as entry

    reported = entry._end

    def end_with_a_stop(code, started, **fields):
        os.kill(os.getpid(), signal.SIGTERM)  # delivered before the next bytecode: inside the window
        return reported(code, started, **fields)

    monkeypatch.setattr(entry, "_end", end_with_a_stop)
    spec = make_spec(tiny_model_dir, [make_item(id="late", steps=1)])
    try:
        assert run_worker(worker_env, put_spec(s3, spec)) == 0
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    assert events(capsys, "stop_ignored")[0]["reason"] == "the job has finished"
    assert layout.manifest_key(RUN_ID, "late") in keys(s3)
