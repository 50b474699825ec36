"""`run` and `reproduce` on this machine with the tiny model: one render shared by the module's tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.cli.conftest import BUCKET, FakeStack, SubmitLambda
from wanbatch import layout
from wanbatch.cli.main import main

PROMPT = "A cat walks on the grass"


@pytest.fixture(scope="session")
def rendered(tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> dict:
    """`wanbatch run --tiny PROMPT` once per session: the worker renders it in a child process on the CPU.

    Under xdist every worker process would render it again; the lock and the shared base folder make the
    first one render and the others reuse its result (pytest-xdist's documented pattern).
    """
    from filelock import FileLock

    shared = tmp_path_factory.getbasetemp()
    if worker_id != "master":
        shared = shared.parent
    root = shared / "cli-tiny-run"
    with FileLock(str(shared / "cli-tiny-run.lock")):
        done = root / "exit-code"
        if not done.is_file():
            with pytest.MonkeyPatch.context() as patch:
                patch.setenv("WANBATCH_NO_PROGRESS", "1")
                code = main(["run", "--tiny", PROMPT, "--seed", "7", "--steps", "4", "--id", "cat",
                             "-o", str(root / "outputs"), "--cache-dir", str(root / "cache")])  # fmt: skip
            done.write_text(str(code))
    [run_dir] = (root / "outputs").iterdir()
    return {"code": int(done.read_text()), "root": root, "run_dir": run_dir, "cache": root / "cache"}


def test_run_tiny_renders_a_video_and_manifest(rendered: dict) -> None:
    run_dir = rendered["run_dir"]
    assert rendered["code"] == 0
    assert run_dir.name.startswith("a-cat-walks-on-the-grass-")
    assert {"spec.json", "cat.mp4", "cat.manifest.json"} <= {p.name for p in run_dir.iterdir()}
    spec = json.loads((run_dir / "spec.json").read_text())
    [item] = spec["items"]
    # A PROMPT's options over --tiny's small defaults over the model card's.
    assert (item["seed"], item["steps"], item["width"], item["height"], item["num_frames"]) == (
        7,
        4,
        832,
        480,
        5,
    )
    assert (item["guidance_scale"], item["guidance_scale_2"], item["flow_shift"]) == (4.0, 3.0, 12.0)
    assert spec["model"]["id"] == str(rendered["cache"] / "tiny-wan")
    manifest = json.loads((run_dir / "cat.manifest.json").read_text())
    assert (manifest["prompt"], manifest["seed"], manifest["output"]["frame_count"]) == (PROMPT, 7, 5)


def test_reproduce_is_bit_identical_to_the_original(rendered: dict, tmp_path: Path, capsys) -> None:
    from worker.video import read_frames

    original = rendered["run_dir"] / "cat.manifest.json"
    code = main(
        ["reproduce", str(original), "--check", "-o", str(tmp_path), "--cache-dir", str(rendered["cache"])]
    )

    captured = capsys.readouterr()
    assert code == 0, captured.err
    [video] = [Path(line) for line in captured.out.splitlines()]
    assert video.parent.parent == tmp_path and video.name == "cat.mp4"
    assert "identical: cat.mp4 has the original's sha256" in captured.err
    first, again = read_frames(rendered["run_dir"] / "cat.mp4"), read_frames(video)
    assert first.shape == again.shape == (5, 480, 832, 3)
    assert np.array_equal(first, again)  # decoded frames, not just the container's bytes
    twin = json.loads((video.parent / "cat.manifest.json").read_text())
    recorded = json.loads(original.read_text())
    for name in ("prompt", "negative_prompt", "seed", "width", "height", "num_frames", "fps", "steps",
                 "guidance_scale", "guidance_scale_2", "flow_shift", "scheduler_config"):  # fmt: skip
        assert twin[name] == recorded[name], name
    assert twin["model"]["files"] == recorded["model"]["files"]


def test_reproduce_check_fails_when_the_bits_differ(rendered: dict, capsys) -> None:
    from wanbatch.cli.reproduce import _compare
    from wanbatch.client.reproduce import load_manifest

    path = rendered["run_dir"] / "cat.manifest.json"
    manifest = load_manifest(path.read_bytes(), name=str(path))
    output = manifest.output.model_copy(update={"sha256": "0" * 64})
    elsewhere = manifest.model_copy(update={"output": output})
    video = rendered["run_dir"] / "cat.mp4"

    assert _compare(manifest, video, check=True, quiet=False) == 0
    assert _compare(elsewhere, video, check=False, quiet=False) == 0  # a warning: other GPUs differ
    assert "warning: cat.mp4 differs from the original" in capsys.readouterr().err
    assert _compare(elsewhere, video, check=True, quiet=False) == 1
    assert "error: cat.mp4 differs from the original" in capsys.readouterr().err


def hub_manifest(rendered: dict, tmp_path: Path) -> Path:
    """The tiny render's manifest, as if the deployment had rendered it from a hub commit."""
    manifest = json.loads((rendered["run_dir"] / "cat.manifest.json").read_text())
    manifest["model"].update(repo_id="Wan-AI/Wan2.2-T2V-A14B-Diffusers", revision="main", commit="c0ffee" * 6,
                             source="hub")  # fmt: skip
    path = tmp_path / "cat.manifest.json"
    path.write_text(json.dumps(manifest))
    return path


def test_reproduce_submit_pins_the_commit_and_every_setting(
    rendered: dict, stack: FakeStack, submit_lambda: SubmitLambda, tmp_path: Path, capsys
) -> None:
    path = hub_manifest(rendered, tmp_path)
    assert main(["reproduce", str(path), "--submit", "--interval", "0.05"]) == 0
    run_id = capsys.readouterr().out.strip().splitlines()[-1]

    spec = stack.get_json(layout.spec_key(run_id))
    assert spec["model"] == {"id": "Wan-AI/Wan2.2-T2V-A14B-Diffusers", "revision": "c0ffee" * 6}
    [item] = spec["items"]
    recorded = json.loads(path.read_text())
    for name in ("prompt", "negative_prompt", "seed", "width", "height", "num_frames", "fps", "steps",
                 "guidance_scale", "guidance_scale_2", "flow_shift"):  # fmt: skip
        assert item[name] == recorded[name], name
    assert item["id"] == "cat"
    [key] = stack.keys("prompts/")
    assert key.startswith("prompts/reproduce/reproduce-cat-") and spec["source"]["bucket"] == BUCKET


def test_reproduce_submit_refuses_a_local_model(rendered: dict, stack: FakeStack, capsys) -> None:
    code = main(["reproduce", str(rendered["run_dir"] / "cat.manifest.json"), "--submit"])
    assert code == 2
    assert "the deployment renders hub models only" in capsys.readouterr().err


def test_reproduce_prints_the_pinned_prompt_file(rendered: dict, tmp_path: Path, capsys) -> None:
    assert main(["reproduce", str(hub_manifest(rendered, tmp_path)), "--print-prompt-file"]) == 0
    prompt_file = json.loads(capsys.readouterr().out)
    assert prompt_file["model"] == {"id": "Wan-AI/Wan2.2-T2V-A14B-Diffusers", "revision": "c0ffee" * 6}
    assert prompt_file["prompts"][0]["size"] == "832*480" and prompt_file["prompts"][0]["seed"] == 7


def test_reproduce_rejects_what_is_not_a_manifest(tmp_path: Path, capsys) -> None:
    path = tmp_path / "spec.json"
    path.write_text('{"run_id": "x"}')
    assert main(["reproduce", str(path)]) == 2
    assert "is not a wanbatch manifest" in capsys.readouterr().err
    assert main(["reproduce", str(tmp_path / "missing.json")]) == 2


def test_run_dry_run_with_the_real_model_writes_the_spec_only(tmp_path: Path, capsys) -> None:
    code = main(["run", "A serene lake at sunset", "--size", "1280x720", "--dry-run", "-o", str(tmp_path),
                 "--cache-dir", str(tmp_path / "cache"), "--offload", "model"])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0
    spec_path = Path(captured.out.strip())
    spec = json.loads(spec_path.read_text())
    assert spec["model"] == {"id": "Wan-AI/Wan2.2-T2V-A14B-Diffusers", "revision": "main"}
    item = spec["items"][0]
    assert (item["width"], item["height"], item["num_frames"], item["steps"]) == (1280, 720, 81, 40)
    assert f"SPEC_URI={spec_path.resolve()}" in captured.err and "OFFLOAD=model" in captured.err
    assert f"MODEL_CACHE_DIR={tmp_path / 'cache' / 'models'}" in captured.err
    assert sorted(p.name for p in spec_path.parent.iterdir()) == ["spec.json"]


def test_run_passes_the_fast_presets_to_the_worker(tmp_path: Path, capsys) -> None:
    args = ["run", "a lake", "--dry-run", "-o", str(tmp_path), "--cache-dir", str(tmp_path / "cache")]
    assert main(args) == 0
    assert "QUANTIZATION=none" in capsys.readouterr().err
    assert main([*args, "--step-cache", "taylorseer", "--quantization", "fp8", "--attention", "fa4"]) == 0
    err = capsys.readouterr().err
    assert "STEP_CACHE=taylorseer" in err and "QUANTIZATION=fp8" in err and "ATTENTION_BACKEND=fa4" in err


def test_reproduce_uses_the_originals_presets_and_kernel(rendered: dict, tmp_path: Path, capsys) -> None:
    manifest = json.loads((rendered["run_dir"] / "cat.manifest.json").read_text())
    assert (manifest["runtime"]["quantization"], manifest["runtime"]["step_cache"]) == (None, None)
    assert manifest["runtime"]["attention_backend"] == "native"  # what `auto` picks on a CPU
    manifest["runtime"]["step_cache"] = "taylorseer"
    manifest["runtime"]["attention_backend"] = "fa4"  # e.g. rendered on an H100
    path = tmp_path / "cached.manifest.json"
    path.write_text(json.dumps(manifest))
    code = main(["reproduce", str(path), "--dry-run", "-o", str(tmp_path / "o"),
                 "--cache-dir", str(rendered["cache"])])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 0, err
    assert "STEP_CACHE=taylorseer" in err and "QUANTIZATION=none" in err and "ATTENTION_BACKEND=fa4" in err
    code = main(["reproduce", str(path), "--dry-run", "-o", str(tmp_path / "o"), "--attention", "native",
                 "--cache-dir", str(rendered["cache"])])  # fmt: skip
    assert code == 0 and "ATTENTION_BACKEND=native" in capsys.readouterr().err  # a machine without FA4


def test_run_a_prompt_file_keeps_its_model_unless_told(tmp_path: Path, capsys) -> None:
    path = tmp_path / "ideas.jsonl"
    path.write_text('"a lake"\n{"id": "owl", "prompt": "an owl", "steps": 8}\n')
    assert main(["run", str(path), "--dry-run", "-o", str(tmp_path / "o"), "--revision", "abc"]) == 0
    spec = json.loads(Path(capsys.readouterr().out.strip()).read_text())
    assert spec["model"] == {"id": "Wan-AI/Wan2.2-T2V-A14B-Diffusers", "revision": "abc"}
    assert [i["id"] for i in spec["items"]] == ["p0000", "owl"] and spec["items_per_job"] == 2
    assert spec["run_id"].startswith("ideas-")


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["run", "missing.json"], 2, "no such prompt file: missing.json"),
        (["run", "--tiny", "--model", "x/y", "a cat"], 2, "--tiny is a model of its own"),
        (["run", "a cat", "--size", "640*640", "--dry-run"], 1, "size '640*640' is not supported"),
        (["run", "a cat", "--frames", "6", "--dry-run"], 1, "num_frames must be 4k+1"),
    ],
)
def test_run_bad_input_is_a_clear_error(argv: list[str], code: int, message: str, tmp_path, capsys) -> None:
    assert main([*argv, "-o", str(tmp_path)]) == code
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_run_with_a_file_refuses_a_prompts_options(tmp_path: Path, capsys) -> None:
    path = tmp_path / "p.json"
    path.write_text('["a cat"]')
    assert main(["run", str(path), "--steps", "4", "-o", str(tmp_path)]) == 2
    assert "--steps set(s) a PROMPT's values" in capsys.readouterr().err


def test_a_failed_render_exits_1_with_the_error_record(tmp_path: Path, capsys) -> None:
    code = main(["run", "a cat", "--model", str(tmp_path / "no-model"), "-o", str(tmp_path / "o"),
                 "--cache-dir", str(tmp_path / "cache"), "--steps", "2"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1
    assert "error: p0000.error.json: ModelSourceError" in err and "the worker exited 1" in err
