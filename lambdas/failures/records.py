"""Plain functions behind the failure recorder: a FAILED `wan-*` Batch job -> error records.

The job writes no error record for a retryable exit (75, or a lost Spot host), so when Batch finally marks a
child FAILED, some of its items may have neither a manifest nor an error record. This writes one for each,
so every item of an accepted file ends as a video or an error.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from wanbatch import layout
from wanbatch.records import put_json_if_absent
from wanbatch.spec import RunSpec, SpecItem, parse_spec

ERROR_SCHEMA_VERSION = 1


@dataclass(frozen=True)
class FailedJob:
    job_id: str
    job_name: str
    run_id: str
    array_index: int | None  # a child of an array job; None for a parent or a plain job
    status_reason: str
    exit_code: int | None
    attempts: int
    spec_uri: str | None


def failed_job_from_event(event: dict[str, Any]) -> FailedJob | None:
    """The failed `wan-*` job a "Batch Job State Change" event reports, or None for anything else."""
    if event.get("source") != "aws.batch" or event.get("detail-type") != "Batch Job State Change":
        return None
    detail = event.get("detail") or {}
    run_id = layout.run_id_from_job_name(detail.get("jobName", ""))
    if detail.get("status") != "FAILED" or not run_id:
        return None
    attempts = detail.get("attempts") or []
    container = detail.get("container") or {}
    last_container = (attempts[-1].get("container") if attempts else None) or container
    environment = {pair.get("name"): pair.get("value") for pair in container.get("environment", [])}
    return FailedJob(
        job_id=detail["jobId"],
        job_name=detail["jobName"],
        run_id=run_id,
        array_index=(detail.get("arrayProperties") or {}).get("index"),
        status_reason=detail.get("statusReason", ""),
        exit_code=last_container.get("exitCode"),
        attempts=len(attempts),
        spec_uri=environment.get("SPEC_URI"),
    )


def load_spec(s3: Any, job: FailedJob, *, default_bucket: str | None) -> tuple[str, RunSpec]:
    """(bucket, spec), from the job's SPEC_URI, else `runs/<run_id>/spec.json` in the default bucket."""
    if job.spec_uri and job.spec_uri.startswith("s3://"):
        bucket, key = layout.parse_s3_uri(job.spec_uri)
    elif default_bucket:
        bucket, key = default_bucket, layout.spec_key(job.run_id)
    else:
        raise ValueError(f"job {job.job_id} has no SPEC_URI and BUCKET is not set: cannot find its spec")
    body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    return bucket, parse_spec(body)


def affected_items(spec: RunSpec, job: FailedJob) -> list[SpecItem]:
    """A child's chunk; every item for a failed parent (or a plain, single-child job)."""
    if job.array_index is None:
        return list(spec.items)
    return spec.chunk(job.array_index)


def existing_keys(s3: Any, bucket: str, run_id: str) -> set[str]:
    """Every key under runs/<run_id>/: one listing instead of two HEADs per item."""
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=layout.run_prefix(run_id))
    return {obj["Key"] for page in pages for obj in page.get("Contents", [])}


def error_record(job: FailedJob, item: SpecItem) -> dict[str, Any]:
    exit_text = f", exit code {job.exit_code}" if job.exit_code is not None else ""
    return {
        "schema_version": ERROR_SCHEMA_VERSION,
        "run_id": job.run_id,
        "item_id": item.id,
        "type": "BatchJobFailed",
        "message": f"Batch job {job.job_id} failed: {job.status_reason or 'no reason given'}{exit_text}",
        "step": None,  # unknown here: the container died without saying
        "attempt": job.attempts,
        "job_id": job.job_id,
        "job_name": job.job_name,
        "array_index": job.array_index,
        "status_reason": job.status_reason,
        "exit_code": job.exit_code,
        "recorded_by": "failure-recorder",
        "recorded_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def record_missing_errors(s3: Any, job: FailedJob, *, default_bucket: str | None) -> list[str]:
    """Write an error record for each affected item with no manifest and no error record; returns the keys."""
    bucket, spec = load_spec(s3, job, default_bucket=default_bucket)
    present = existing_keys(s3, bucket, spec.run_id)
    written = []
    for item in affected_items(spec, job):
        key = layout.error_key(spec.run_id, item.id)
        if layout.manifest_key(spec.run_id, item.id) in present or key in present:
            continue
        if put_json_if_absent(s3, bucket, key, error_record(job, item)):
            written.append(key)
    return written
