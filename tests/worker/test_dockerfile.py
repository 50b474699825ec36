"""The job image's Dockerfile: lint-clean, reproducible pins, non-root, `python -m worker`."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "batch_image" / "Dockerfile"


def test_hadolint_passes():
    hadolint = Path(sys.executable).parent / "hadolint"
    result = subprocess.run([str(hadolint), str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_image_runs_the_worker_as_uid_1000_with_the_cuda_build_of_the_tested_torch():
    text = DOCKERFILE.read_text()
    # CMD (replaceable by the job definition's command, e.g. torchrun), never an ENTRYPOINT that would
    # turn that command into the worker's arguments.
    assert 'CMD ["python", "-m", "worker"]' in text
    assert not any(line.startswith("ENTRYPOINT") for line in text.splitlines())
    assert "USER 1000:1000" in text and "--uid 1000 --gid 1000" in text
    assert "torch==2.13.0" in text and "download.pytorch.org/whl/cu" in text
    assert "flash" not in text.split("\nFROM", 1)[1].lower().replace("no flash-attn build", "")
    assert "COPY wanbatch/ /app/wanbatch/" in text  # built from the repo root


def test_every_requirement_is_pinned_exactly_and_matches_the_tested_versions():
    from importlib.metadata import version

    lines = [
        line for line in (ROOT / "batch_image" / "requirements.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]  # fmt: skip
    assert lines and all(re.fullmatch(r"[A-Za-z0-9._-]+==[A-Za-z0-9.+-]+", line) for line in lines)
    pins = dict(line.split("==") for line in lines)
    for name in ("torch", "diffusers", "transformers", "accelerate", "huggingface-hub", "av"):
        assert version(name).split("+")[0] == pins[name]


def test_build_context_keeps_only_what_the_image_copies():
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    assert ignore[ignore.index("*") :][:4] == [
        "*",
        "!batch_image/requirements.txt",
        "!batch_image/worker/",
        "!wanbatch/",
    ]
