"""benchmarks/e2e.py on CPU with tiny shapes: the checkpoint it builds, the hash memo it seeds, the worker
run it drives, and the arithmetic behind the numbers in BENCHMARKS.md."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks import e2e


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("e2e") / "model"
    e2e.build_checkpoint(directory, device="cpu", tiny=True)
    return directory


def test_build_writes_a_diffusers_folder_with_hard_linked_experts(tiny_checkpoint):
    index = json.loads((tiny_checkpoint / "model_index.json").read_text())
    assert index["boundary_ratio"] == 0.875
    assert index["transformer_2"] == ["diffusers", "WanTransformer3DModel"]
    for f in (tiny_checkpoint / "transformer").iterdir():
        twin = tiny_checkpoint / "transformer_2" / f.name
        assert twin.stat().st_ino == f.stat().st_ino  # one copy on disk
    scheduler = json.loads((tiny_checkpoint / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["_class_name"] == "UniPCMultistepScheduler" and scheduler["use_flow_sigmas"] is True
    assert json.loads((tiny_checkpoint / e2e.BUILD_MARKER).read_text())["tiny"] is True


def test_distinct_experts_are_copies_with_their_own_inodes(tiny_checkpoint, tmp_path):
    directory = tmp_path / "distinct"
    record = e2e.build_checkpoint(directory, device="cpu", tiny=True, distinct_experts=True)
    assert record["distinct_experts"] is True
    for f in (directory / "transformer").iterdir():
        twin = directory / "transformer_2" / f.name
        assert twin.stat().st_ino != f.stat().st_ino and twin.read_bytes() == f.read_bytes()
    # A hard-linked build is not taken for a distinct one (nor the other way round).
    assert e2e.build_checkpoint(tiny_checkpoint, device="cpu", tiny=True)["distinct_experts"] is False


def test_drop_caches_covers_every_weight_file(tiny_checkpoint, monkeypatch):
    from benchmarks import io_rates

    dropped = []
    monkeypatch.setattr(io_rates, "drop_page_cache", lambda path: dropped.append(path) or "fadvise (test)")
    assert e2e.drop_weights_from_page_cache(tiny_checkpoint) == "fadvise (test)"
    assert sorted(dropped) == sorted(tiny_checkpoint.rglob("*.safetensors"))
    assert {p.parent.name for p in dropped} >= {"transformer", "transformer_2", "text_encoder", "vae"}


def test_build_reuses_a_finished_folder(tiny_checkpoint):
    before = (tiny_checkpoint / "transformer" / "config.json").stat().st_mtime_ns
    record = e2e.build_checkpoint(tiny_checkpoint, device="cpu", tiny=True)
    assert record["tiny"] is True
    assert (tiny_checkpoint / "transformer" / "config.json").stat().st_mtime_ns == before


def test_seeded_memo_spares_the_worker_the_hashing(tiny_checkpoint, tmp_path, monkeypatch):
    from worker import checkpoints

    e2e.seed_hash_memo(tiny_checkpoint, tmp_path / "cache", workers=2)
    expected = checkpoints.hash_tree(tiny_checkpoint)  # no memo: hashes every file

    def no_hashing(path):
        raise AssertionError(f"re-hashed {path}")

    monkeypatch.setattr(checkpoints, "sha256_file", no_hashing)
    memo = checkpoints._local_memo_path(tmp_path / "cache", tiny_checkpoint.resolve())
    assert checkpoints.hash_tree(tiny_checkpoint.resolve(), memo=memo) == expected


def _manifest(steps: list[float], *, total: float, denoise: float) -> dict:
    return {
        "steps": len(steps),
        "boundary_ratio": 0.875,
        "scheduler_config": dict(e2e.SCHEDULER, flow_shift=12.0),
        "timings": {
            "checkpoint_fetch_s": 0.0,
            "load_s": 20.0,
            "text_encode_s": 1.0,
            "denoise_s": denoise,
            "step_s": steps,
            "vae_decode_s": 3.0,
            "encode_s": 5.0,
            "total_s": total,
        },  # fmt: skip
        "runtime": {
            "offload": "none",
            "compile": "regional",
            "attention_backend": "native",
            "vae_tiling": False,
            "text_encoder_device": "gpu",
        },  # fmt: skip
        "output": {"bytes": 10, "frame_count": 81},
        "hardware": {"gpu_name": "GPU"},
        "versions": {},
    }


def test_summary_separates_warm_up_steps_and_labels_the_extrapolation():
    # 4 steps at shift 12: three high-noise, one low-noise; the first of each expert is a warm-up.
    steps = [25.0, 5.5, 5.6, 7.5]
    run = {"exit_code": 0, "wall_s": 80.0, "events": [{"event": "render_stats", "peak_gpu_gib": 73.4}],
           "child_peak_rss_gib": 10.0}  # fmt: skip
    summary = e2e.summarize(run, _manifest(steps, total=52.0, denoise=sum(steps)), target_steps=40)
    assert summary["step_experts"] == ["high", "high", "high", "low"]
    assert summary["s_per_step"] == pytest.approx(5.55)
    assert summary["warmup_extra_s"] == pytest.approx(25.0 + 7.5 - 2 * 5.55)
    # everything outside the loop + warm-up + 40 steady steps
    assert summary["extrapolated_s"] == pytest.approx(80.0 - 43.6 + 21.4 + 40 * 5.55)
    keys = e2e.result_keys("480p_4", summary)
    assert keys["e2e_480p_4_steps_s"] == 80.0
    assert keys["e2e_480p_40_steps_s_extrapolated"] == summary["extrapolated_s"]
    assert keys["peak_gib_480p_e2e"] == 73.4
    assert "e2e_480p_40_steps_s" not in keys  # measured and extrapolated numbers never share a key


def test_a_warm_cache_run_gets_its_own_key_and_the_background_waits_are_kept():
    steps = [9.0, 5.2, 5.2, 5.3]
    events = [{"event": "render_stats", "peak_gpu_gib": 73.4}, {"event": "expert_loaded", "waited_s": 0.4},
              {"event": "expert_loaded", "expert": "transformer", "seconds": 9.0}]  # swap: no wait field
    run = {"exit_code": 0, "wall_s": 60.0, "events": events, "child_peak_rss_gib": 10.0}  # fmt: skip
    summary = e2e.summarize(run, _manifest(steps, total=30.0, denoise=sum(steps)))
    assert summary["background_waits_s"] == {"expert_loaded": 0.4}
    keys = e2e.result_keys("480p_4_warm", summary)
    assert keys["e2e_480p_4_steps_s_warm_caches"] == 60.0
    assert "e2e_480p_4_steps_s" not in keys and "s_per_step_480p_e2e" not in keys  # the cold run's keys
    fill = e2e.result_keys("480p_4_fill", summary)  # fills the caches for a warm run: shares no key
    assert set(fill) == {"e2e_480p_4_fill"}
    disk = e2e.result_keys("480p_4_colddisk", summary)
    assert disk["e2e_480p_4_steps_s_cold_disk"] == 60.0 and disk["load_s_480p_cold_disk"] == 20.0
    assert "e2e_480p_4_steps_s" not in disk


def test_48gb_mode_keys():
    steps = [50.0, 22.0, 22.0, 46.0]
    run = {"exit_code": 0, "wall_s": 211.0, "events": [{"event": "render_stats", "peak_gpu_gib": 31.3,
           "host_peak_rss_gib": 71.5}], "child_peak_rss_gib": 71.0}  # fmt: skip
    summary = e2e.summarize(run, _manifest(steps, total=188.0, denoise=140.0))
    keys = e2e.result_keys("720p_4_48gb", summary)
    assert keys["peak_gib_720p_48gb_mode"] == 31.3
    assert keys["host_rss_gib_48gb_mode"] == 71.5
    assert keys["s_per_step_720p_48gb_mode"] == 22.0
    assert keys["e2e_720p_40_steps_s_48gb_mode_extrapolated"] == summary["extrapolated_s"]
    assert e2e.time_ratio_keys("720p_4_48gb", 22.0, (20.0, "s_per_step_720p_e2e")) == {
        "time_ratio_48gb_mode": 1.1, "time_ratio_48gb_mode_reference": "s_per_step_720p_e2e"}  # fmt: skip


def test_a_48gb_run_at_another_size_keeps_the_720p_keys_and_records_a_full_run_as_measured():
    steps = [20.0] + [5.1] * 26 + [9.0] + [5.1] * 12  # 40 steps: the low-noise expert swaps in at step 28
    run = {"exit_code": 0, "wall_s": 260.0, "events": [{"event": "render_stats", "peak_gpu_gib": 20.0,
           "host_peak_rss_gib": 15.0}], "child_peak_rss_gib": 15.0}  # fmt: skip
    summary = e2e.summarize(run, _manifest(steps, total=240.0, denoise=sum(steps)))
    keys = e2e.result_keys("480p_40_48gb", summary)
    assert keys["host_rss_gib_480p_48gb_mode"] == 15.0 and "host_rss_gib_48gb_mode" not in keys
    assert keys["e2e_480p_40_steps_s_48gb_mode"] == 260.0
    assert not [key for key in keys if key.endswith("extrapolated")]
    ratio = e2e.time_ratio_keys("480p_40_48gb", 5.1, (5.0, "s_per_step_480p_e2e"))
    assert ratio["time_ratio_480p_48gb_mode"] == 1.02
    assert ratio["time_ratio_480p_48gb_mode_reference"] == "s_per_step_480p_e2e"


def test_a_failed_run_records_only_its_exit():
    run = {"exit_code": 1, "wall_s": 5.0, "events": [], "child_peak_rss_gib": 1.0}
    summary = e2e.summarize(run, None)
    assert summary["exit_code"] == 1 and "s_per_step" not in summary
    assert set(e2e.result_keys("480p_4", summary)) == {"e2e_480p_4"}


def test_av_stand_in_reads_what_the_worker_writes(tmp_path):
    import importlib.util

    import av
    from worker.video import encode_mp4

    spec = importlib.util.spec_from_file_location(
        "av_shim", e2e.common.REPO_ROOT / "benchmarks/gpu_shims/av.py"
    )
    shim = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(shim)
    frames = np.random.default_rng(0).integers(0, 255, (5, 48, 64, 3), dtype=np.uint8)
    path = encode_mp4(frames, tmp_path / "v.mp4", 16)
    for module in (av, shim):
        with module.open(str(path)) as container:
            stream = container.streams.video[0]
            decoded = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
            info = (stream.codec_context.width, stream.codec_context.height, stream.codec_context.name,
                    stream.codec_context.pix_fmt, float(stream.average_rate), len(decoded))  # fmt: skip
        assert info == (64, 48, "h264", "yuv420p", 16.0, 5)


def test_worker_runs_end_to_end_on_the_tiny_checkpoint(tiny_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("BENCH_RESULTS", str(tmp_path / "results.json"))
    code = e2e.main(["run", "--model", str(tiny_checkpoint), "--work", str(tmp_path / "runs"), "--name",
                     "480p_2", "--frames", "5", "--steps", "2"])  # fmt: skip
    assert code == 0
    results = json.loads((tmp_path / "results.json").read_text())
    run = results["e2e_480p_2"]
    assert run["exit_code"] == 0 and run["frame_count"] == 5 and run["compile"] == "none"  # CPU: eager
    assert results["e2e_480p_2_steps_s"] == run["wall_s"] > 0
    # The worker's last line (job_end) came through before its fast exit, which took part of the wall time.
    assert 0 <= run["exit_after_job_end_s"] < run["wall_s"]
    assert run["checkpoint_fetch_s"] < 1.0  # the seeded memo: no hashing inside the worker
