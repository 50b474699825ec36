"""The whole system on one machine: upload a prompt file, run the real submit handler on the real-shaped
S3 event, run the submitted Batch job's children with the local executor, download what they wrote."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from wanbatch import layout
from wanbatch.local.aws import LocalStack, create_stack, moto_server
from wanbatch.local.events import s3_put_event
from wanbatch.local.executor import ChildResult, describe_job, run_job


@dataclass
class FlowResult:
    run_id: str
    job_name: str
    output_dir: Path
    videos: list[Path] = field(default_factory=list)
    manifests: list[Path] = field(default_factory=list)
    errors: list[Path] = field(default_factory=list)
    children: list[ChildResult] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class LocalLambdaContext:
    """What a handler reads of the Lambda context (local runs and tests call the handlers directly)."""

    function_name: str = "wanbatch-local-submit"
    memory_limit_in_mb: int = 512
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:000000000000:function:wanbatch-local-submit"
    aws_request_id: str = "local"

    def get_remaining_time_in_millis(self) -> int:
        return 900_000


@contextmanager
def _environ(values: dict[str, str]) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def submit_environment(stack: LocalStack, *, model_id: str, model_revision: str) -> dict[str, str]:
    """The submit Lambda's environment as the stack sets it (stacks/triggers.py)."""
    return {
        **stack.environment(),
        "JOB_QUEUE": stack.job_queue,
        "JOB_DEFINITION": stack.job_definition,
        "IDEMPOTENCY_TABLE": stack.idempotency_table,
        "MODEL_ID": model_id,
        "MODEL_REVISION": model_revision,
        "ITEMS_PER_JOB": "1",
        "POWERTOOLS_SERVICE_NAME": "wanbatch-submit",
        "POWERTOOLS_METRICS_NAMESPACE": "wanbatch-local",
        "POWERTOOLS_TRACE_DISABLED": "true",
        "POWERTOOLS_LOG_LEVEL": "WARNING",
        "POWERTOOLS_METRICS_DISABLED": "true",  # no EMF lines in the demo output
    }


def find_run_record(s3, bucket: str, *, source_key: str, etag: str) -> dict | None:  # noqa: ANN001
    """The run.json whose source is this upload, or None while the Lambda hasn't written it."""
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=layout.RUNS_PREFIX)
    for page in pages:
        for entry in page.get("Contents", []):
            if not entry["Key"].endswith("/run.json"):
                continue
            record = json.loads(s3.get_object(Bucket=bucket, Key=entry["Key"])["Body"].read())
            source = record.get("source", {})
            if source.get("key") == source_key and source.get("etag", "").strip('"') == etag.strip('"'):
                return record
    return None


def download_run(s3, bucket: str, run_id: str, destination: Path) -> list[Path]:  # noqa: ANN001
    destination.mkdir(parents=True, exist_ok=True)
    paths = []
    prefix = layout.run_prefix(run_id)
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for entry in page.get("Contents", []):
            name = entry["Key"][len(prefix):]
            if "/" in name or not name.endswith((".mp4", ".manifest.json", ".error.json")):
                continue
            path = destination / name
            s3.download_file(bucket, entry["Key"], str(path))
            paths.append(path)
    return sorted(paths)


def run_local_flow(prompt_file: Path, *, model_dir: Path, cache_dir: Path, outputs: Path,
                   say: Callable[[str], None] = print) -> FlowResult:
    """Upload `prompt_file`, submit it through the real handler, render its job locally, download results."""
    started = time.perf_counter()
    with moto_server() as endpoint:
        stack = create_stack(endpoint)
        s3, batch = stack.client("s3"), stack.client("batch")
        key = f"{layout.PROMPTS_PREFIX}{prompt_file.name}"
        body = prompt_file.read_bytes()
        etag = s3.put_object(Bucket=stack.bucket, Key=key, Body=body)["ETag"].strip('"')
        say(f"uploaded s3://{stack.bucket}/{key} (moto at {endpoint})")

        event = s3_put_event(bucket=stack.bucket, key=key, etag=etag, size=len(body))
        with _environ(submit_environment(stack, model_id=str(model_dir.resolve()), model_revision="local")):
            from lambdas.submit.handler import handler

            handler(event, LocalLambdaContext())
        record = find_run_record(s3, stack.bucket, source_key=key, etag=etag)
        if record is None:
            raise RuntimeError(f"the submit handler accepted no run for {key}: see rejected/{key}.error.json")
        run_id, job_id = record["run_id"], record["job_id"]
        job = describe_job(batch, job_id)
        children = (job.get("arrayProperties") or {}).get("size") or 1
        say(f"submitted Batch job {job['jobName']} ({children} child job(s)); rendering locally")

        worker_env = {**stack.environment(), "MODEL_CACHE_DIR": str(cache_dir.resolve())}
        results = run_job(job, base_env=worker_env)
        for child in results:
            if child.exit_code != 0:
                say(f"child {child.array_index} exited {child.exit_code}:\n{child.log[-2000:]}")
        paths = download_run(s3, stack.bucket, run_id, outputs / run_id)

    return FlowResult(
        run_id=run_id,
        job_name=job["jobName"],
        output_dir=outputs / run_id,
        videos=[p for p in paths if p.suffix == ".mp4"],
        manifests=[p for p in paths if p.name.endswith(".manifest.json")],
        errors=[p for p in paths if p.name.endswith(".error.json")],
        children=results,
        seconds=time.perf_counter() - started,
    )
