"""Run submitted Batch jobs on this machine, as Batch would run their containers.

`describe_jobs` gives each job's command, environment and array size; each array child runs that command
as a subprocess in the image's app folder with the variables Batch sets.
"""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

APP_DIR = Path(__file__).resolve().parents[2] / "batch_image"  # the image's working directory


@dataclass(frozen=True)
class ChildResult:
    job_name: str
    array_index: int
    exit_code: int
    log: str


def describe_job(batch, job_id: str) -> dict:  # noqa: ANN001 (a boto3 Batch client)
    jobs = batch.describe_jobs(jobs=[job_id])["jobs"]
    if not jobs:
        raise LookupError(f"no Batch job with id {job_id}")
    return jobs[0]


def child_command(job: dict) -> list[str]:
    """The container command, with `python` meaning this interpreter (the repo's .venv)."""
    command = list(job["container"]["command"])
    if command and command[0] in ("python", "python3"):
        command[0] = sys.executable
    return command


def run_job(job: dict, *, base_env: dict[str, str], parallel: int = 2, attempt: int = 1) -> list[ChildResult]:
    """Run every array child of `job` (a describe_jobs entry); returns each child's exit code and log."""
    size = (job.get("arrayProperties") or {}).get("size") or 0
    indexes = list(range(size)) if size else [None]
    job_env = {item["name"]: item["value"] for item in job["container"].get("environment", [])}
    command = child_command(job)

    def run_child(index: int | None) -> ChildResult:
        env = {**os.environ, **base_env, **job_env, "AWS_BATCH_JOB_ATTEMPT": str(attempt),
               "AWS_BATCH_JOB_ID": job["jobId"] + (f":{index}" if index is not None else "")}
        if index is not None:
            env["AWS_BATCH_JOB_ARRAY_INDEX"] = str(index)
        done = subprocess.run(command, cwd=APP_DIR, env=env, capture_output=True, text=True, check=False)
        return ChildResult(job["jobName"], index or 0, done.returncode, done.stdout + done.stderr)

    with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
        return list(pool.map(run_child, indexes))
