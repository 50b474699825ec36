"""Render on this machine: a resolved spec in `<output>/<run_id>/spec.json`, then `python -m worker` on it.

The worker is the job container's own code (contract 5 with a local SPEC_URI), run as a child process so
its signal handlers, logging and torch stay out of the CLI. Its stdout is one JSON event per line
(worker.progress.emit); those drive the progress bar. Its stderr goes to `<run_dir>/worker.log`.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import wanbatch
from wanbatch.prompts import PromptFile
from wanbatch.resolve import resolve_run
from wanbatch.spec import ModelRef, RunSpec, Source, make_run_id

LOCAL_BUCKET = "local"  # the spec's source for a file that never went to S3
LOG_NAME = "worker.log"


def cache_root() -> Path:
    """Where local runs keep models: $WANBATCH_CACHE, else ~/.cache/wanbatch."""
    return Path(os.environ.get("WANBATCH_CACHE") or Path.home() / ".cache" / "wanbatch").expanduser()


def tiny_model(root: Path) -> Path:
    """The tiny random-weight model, built once into `<root>/tiny-wan` (needs torch: imported here)."""
    from worker.tiny_model import ensure_tiny_model

    return ensure_tiny_model(root / "tiny-wan")


def local_spec(
    prompt_file: PromptFile, *, name: str, content: bytes, model: ModelRef, now: datetime | None = None
) -> RunSpec:
    """The run spec as the submit Lambda would resolve it, for a file that stays on this machine.

    The run id hashes the content in place of an S3 etag; one process renders every item (one model load).
    """
    etag = hashlib.sha256(content).hexdigest()
    key = name.replace("/", "-").replace("\\", "-")
    run_id = make_run_id(bucket=LOCAL_BUCKET, key=key, etag=etag, sequencer="", time=now or datetime.now(UTC))
    spec = resolve_run(
        prompt_file,
        run_id=run_id,
        source=Source(bucket=LOCAL_BUCKET, key=name, etag=etag),
        default_model=model,
    )
    return spec.model_copy(update={"items_per_job": len(spec.items)})


def write_spec(spec: RunSpec, output_dir: Path) -> Path:
    run_dir = output_dir / spec.run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "spec.json"
    path.write_text(json.dumps(spec.model_dump(mode="json"), indent=2, ensure_ascii=False))
    return path


def worker_environment(
    spec_path: Path, *, model_cache_dir: Path, offload: str = "auto", text_encoder_device: str = "auto",
    quantization: str = "none", step_cache: str = "none", attention: str = "auto",
    base: Mapping[str, str] | None = None,
) -> dict[str, str]:  # fmt: skip
    """Contract 5 for a local run: one child (index 0) rendering the whole spec."""
    env = dict(os.environ if base is None else base)
    for name in ("AWS_BATCH_JOB_ARRAY_INDEX", "AWS_BATCH_JOB_ATTEMPT", "AWS_BATCH_JOB_ID", "WARM_MODEL"):
        env.pop(name, None)
    env.update({
        "SPEC_URI": str(spec_path.resolve()),
        "MODEL_CACHE_DIR": str(model_cache_dir),
        "OFFLOAD": offload,
        "TEXT_ENCODER_DEVICE": text_encoder_device,
        "QUANTIZATION": quantization,
        "STEP_CACHE": step_cache,
        "ATTENTION_BACKEND": attention,
        "AWS_EC2_METADATA_DISABLED": "true",  # not an EC2 instance: don't wait for instance metadata
        "PYTHONUNBUFFERED": "1",
    })  # fmt: skip
    # From a checkout (not an installed wheel) the worker package lives in batch_image/.
    repo = Path(wanbatch.__file__).resolve().parent.parent
    paths = [str(p) for p in (repo, repo / "batch_image") if p.is_dir()]
    env["PYTHONPATH"] = os.pathsep.join([*paths, *filter(None, [env.get("PYTHONPATH")])])
    return env


def worker_command() -> list[str]:
    return [sys.executable, "-m", "worker"]


@dataclass
class RenderResult:
    run_dir: Path
    exit_code: int
    videos: list[Path] = field(default_factory=list)
    manifests: list[Path] = field(default_factory=list)
    errors: list[Path] = field(default_factory=list)

    @property
    def log(self) -> Path:
        return self.run_dir / LOG_NAME

    def log_tail(self, lines: int = 20) -> str:
        if not self.log.is_file():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def render(
    spec_path: Path, env: Mapping[str, str], on_event: Callable[[dict[str, Any]], None]
) -> RenderResult:
    """Run the worker on a local spec; `on_event` gets each JSON event it prints."""
    run_dir = spec_path.parent
    with open(run_dir / LOG_NAME, "w") as log, subprocess.Popen(
        worker_command(), env=dict(env), stdout=subprocess.PIPE, stderr=log, text=True, cwd=run_dir
    ) as child:  # fmt: skip
        assert child.stdout is not None
        for line in child.stdout:
            try:
                event = json.loads(line)
            except ValueError:  # a library printing to stdout: keep it in the log
                log.write(line)
                continue
            if isinstance(event, dict):
                on_event(event)
        code = child.wait()
    return collect(spec_path, code)


def collect(spec_path: Path, exit_code: int) -> RenderResult:
    """The run folder's outputs for the spec's items, in spec order."""
    run_dir = spec_path.parent
    spec = json.loads(spec_path.read_text())
    result = RenderResult(run_dir=run_dir, exit_code=exit_code)
    for item in spec["items"]:
        for suffix, found in ((".mp4", result.videos), (".manifest.json", result.manifests),
                              (".error.json", result.errors)):  # fmt: skip
            path = run_dir / f"{item['id']}{suffix}"
            if path.is_file():
                found.append(path)
    return result
