"""A submitted run as S3 shows it: its spec, its Batch job, and each item's state (contract 2's keys)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from wanbatch import layout
from wanbatch.errors import RunNotFoundError
from wanbatch.records import put_json_if_absent
from wanbatch.spec import RunSpec, parse_spec

STATES = ("done", "failed", "running", "pending")


@dataclass
class ItemStatus:
    id: str
    state: str  # done | failed | running | pending
    step: int | None = None
    total_steps: int | None = None
    eta_s: float | None = None
    s_per_step: float | None = None
    expert: str | None = None
    attempt: int | None = None
    progress_state: str | None = None  # the progress record's own state (denoising, interrupted, ...)
    error: dict[str, Any] | None = None  # type and message of the error record


@dataclass
class RunStatus:
    run_id: str
    job_id: str | None
    job_name: str | None
    job_status: str | None
    items: list[ItemStatus] = field(default_factory=list)

    @property
    def counts(self) -> dict[str, int]:
        return {state: sum(item.state == state for item in self.items) for state in STATES}

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "job_id": self.job_id,
            "job_name": self.job_name,
            "job_status": self.job_status,
            "counts": self.counts,
            "items": [asdict(item) for item in self.items],
        }


def get_json(s3: Any, bucket: str, key: str) -> dict[str, Any] | None:
    """The object parsed as JSON, or None when it does not exist."""
    try:
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except s3.exceptions.NoSuchKey:
        return None
    return json.loads(body)


def load_spec(s3: Any, bucket: str, run_id: str) -> RunSpec:
    try:
        body = s3.get_object(Bucket=bucket, Key=layout.spec_key(run_id))["Body"].read()
    except s3.exceptions.NoSuchKey:
        raise RunNotFoundError(
            f"no run {run_id!r} in s3://{bucket}/ (no {layout.spec_key(run_id)}); "
            "`wanbatch submit` prints the run id"
        ) from None
    return parse_spec(body)


def run_objects(s3: Any, bucket: str, run_id: str) -> dict[str, int]:
    """Names (relative to runs/<run_id>/) and sizes of the run's files, from one listing."""
    prefix = layout.run_prefix(run_id)
    names: dict[str, int] = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for entry in page.get("Contents", []):
            names[entry["Key"][len(prefix) :]] = entry["Size"]
    return names


def job_status(batch: Any, job_id: str | None) -> str | None:
    if not job_id:
        return None
    jobs = batch.describe_jobs(jobs=[job_id])["jobs"]
    return jobs[0]["status"] if jobs else None


def run_status(s3: Any, batch: Any, bucket: str, run_id: str) -> RunStatus:
    """Each item: done (manifest), failed (error record), running (progress record), or pending."""
    spec = load_spec(s3, bucket, run_id)
    record = get_json(s3, bucket, layout.run_record_key(run_id)) or {}
    names = run_objects(s3, bucket, run_id)
    failed_children = _failed_children(s3, bucket, spec, names)
    status = RunStatus(
        run_id=run_id,
        job_id=record.get("job_id"),
        job_name=record.get("job_name"),
        job_status=job_status(batch, record.get("job_id")),
    )
    for index, item in enumerate(spec.items):
        if f"{item.id}.manifest.json" in names:
            status.items.append(ItemStatus(item.id, "done", step=item.steps, total_steps=item.steps))
        elif f"{item.id}.error.json" in names:
            error = get_json(s3, bucket, layout.error_key(run_id, item.id)) or {}
            status.items.append(ItemStatus(item.id, "failed", error=_brief(error)))
        elif index // spec.items_per_job in failed_children:  # its child died before knowing its items
            status.items.append(
                ItemStatus(item.id, "failed", error=failed_children[index // spec.items_per_job])
            )
        elif f"{item.id}.progress.json" in names:
            progress = get_json(s3, bucket, layout.progress_key(run_id, item.id)) or {}
            status.items.append(_running(item.id, progress))
        else:
            status.items.append(ItemStatus(item.id, "pending", total_steps=item.steps))
    return status


def _failed_children(s3: Any, bucket: str, spec: RunSpec, names: dict[str, int]) -> dict[int, dict]:
    failed = {}
    for index in range(spec.num_children):
        key = layout.child_error_key(spec.run_id, index)
        if key.rsplit("/", 1)[1] in names:
            failed[index] = _brief(get_json(s3, bucket, key) or {})
    return failed


def _brief(error: dict[str, Any]) -> dict[str, Any]:
    return {"type": error.get("type"), "message": error.get("message"), "step": error.get("step")}


def _running(item_id: str, progress: dict[str, Any]) -> ItemStatus:
    return ItemStatus(
        item_id,
        "running",
        step=progress.get("step"),
        total_steps=progress.get("total_steps"),
        eta_s=progress.get("eta_s"),
        s_per_step=progress.get("s_per_step"),
        expert=progress.get("expert"),
        attempt=progress.get("attempt"),
        progress_state=progress.get("state"),
    )


@dataclass
class CancelResult:
    job_id: str
    cancelled: list[str]  # items given a Cancelled error record now
    done: list[str]
    failed: list[str]  # items that already had an error record (left as they were)


def cancel_run(s3: Any, batch: Any, bucket: str, run_id: str, *, reason: str) -> CancelResult:
    """Terminate the run's Batch job (an array parent takes its children), then record unfinished items.

    Terminating first means no child starts an item after its Cancelled record is written; a record the
    job wrote meanwhile is never overwritten (conditional put).
    """
    spec = load_spec(s3, bucket, run_id)
    record = get_json(s3, bucket, layout.run_record_key(run_id))
    if not record or not record.get("job_id"):
        raise RunNotFoundError(f"run {run_id!r} has no Batch job yet (no {layout.run_record_key(run_id)})")
    batch.terminate_job(jobId=record["job_id"], reason=reason[:256])
    names = run_objects(s3, bucket, run_id)
    result = CancelResult(job_id=record["job_id"], cancelled=[], done=[], failed=[])
    for item in spec.items:
        if f"{item.id}.manifest.json" in names:
            result.done.append(item.id)
        elif f"{item.id}.error.json" in names:
            result.failed.append(item.id)
        else:
            progress = get_json(s3, bucket, layout.progress_key(run_id, item.id)) or {}
            written = put_json_if_absent(s3, bucket, layout.error_key(run_id, item.id), {
                "type": "Cancelled",
                "message": reason,
                "step": progress.get("step"),
                "attempt": progress.get("attempt"),
                "exit_code": None,
                "written_by": "cli",
                "at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            })  # fmt: skip
            (result.cancelled if written else result.failed).append(item.id)
    return result
