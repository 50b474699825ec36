"""Plain functions behind the submit Lambda: read, validate, resolve, write the spec, SubmitJob once."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from aws_lambda_powertools import Logger
from botocore.exceptions import ClientError

from lambdas.submit.events import Trigger
from lambdas.submit.fleet import parallel_slots
from lambdas.submit.settings import SubmitSettings
from wanbatch import layout
from wanbatch.errors import FieldError, PromptFileError
from wanbatch.packing import choose_items_per_job
from wanbatch.prompts import PromptFile, parse_prompt_file
from wanbatch.resolve import resolve_run
from wanbatch.spec import RunSpec, Source, make_run_id

logger = Logger(child=True)

MAX_ERRORS_SHOWN = 20  # in the response and the log line; the rejection record has them all

# submit_run, or its idempotent wrapper (lambdas.submit.dedupe): called with keyword arguments only.
Submitter = Callable[..., dict[str, Any]]


@dataclass(frozen=True)
class Outcome:
    """What happened to one prompt file; the handler turns it into metrics and its response."""

    status: str  # submitted | duplicate | rejected | ignored
    bucket: str
    key: str
    run_id: str | None = None
    prompts: int = 0
    job_id: str | None = None
    reason: str | None = None
    errors: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        # The rejection record holds every error; the Lambda's response stays small.
        return asdict(self) | {"errors": self.errors[:MAX_ERRORS_SHOWN], "error_count": len(self.errors)}


@dataclass(frozen=True)
class PromptObject:
    body: bytes
    etag: str
    version_id: str | None


def process_trigger(
    trigger: Trigger, *, settings: SubmitSettings, s3: Any, batch: Any, submit: Submitter
) -> Outcome:
    """One prompt file from event to submitted run (or rejection record)."""
    # 1. Only prompts/ uploads and schedules/ firings start runs.
    expected = layout.SCHEDULES_PREFIX if trigger.scheduled else layout.PROMPTS_PREFIX
    if not (trigger.key.startswith(expected) and trigger.key.endswith(layout.PROMPT_SUFFIXES)):
        logger.warning("ignoring an object that is not a prompt file", extra={"key": trigger.key})
        return Outcome("ignored", trigger.bucket, trigger.key, reason=f"not {expected}**.json(l)")

    # 2. Read exactly the object the event announced.
    obj = read_prompt_object(s3, trigger)
    if obj is None:
        logger.warning("the object changed or vanished since the event", extra={"key": trigger.key})
        return Outcome(
            "ignored", trigger.bucket, trigger.key, reason="object replaced or deleted since the event"
        )

    # 3. Validate; an invalid file submits nothing and leaves a rejection record.
    try:
        prompt_file = parse_prompt_file(obj.body, name=trigger.key)
        job_definition = job_definition_for(settings, prompt_file)
    except PromptFileError as err:
        write_rejection(s3, trigger, obj, err)
        messages = [e.describe() for e in err.errors]
        logger.warning(
            "rejected prompt file",
            extra={"key": trigger.key, "error_count": len(messages), "errors": messages[:MAX_ERRORS_SHOWN]},
        )
        return Outcome("rejected", trigger.bucket, trigger.key, errors=messages)

    # 4. Resolve into contract 4.
    run_id = make_run_id(
        bucket=trigger.bucket, key=trigger.key, etag=obj.etag, sequencer=trigger.sequencer, time=trigger.time
    )
    logger.set_correlation_id(run_id)
    spec = resolve(prompt_file, run_id=run_id, trigger=trigger, obj=obj, settings=settings, batch=batch)

    # 5. Submit once per run_id (the wrapper dedupes concurrent and redelivered events).
    record = submit(
        request={"run_id": run_id},
        spec=spec,
        job_definition=job_definition,
        settings=settings,
        s3=s3,
        batch=batch,
        origin={"trigger": "schedule" if trigger.scheduled else "upload", "event_time": _iso(trigger.time)},
    )
    status = "duplicate" if record.get("duplicate") else "submitted"
    logger.info(f"run {status}", extra={"job_id": record["job_id"], "items": len(spec.items)})
    return Outcome(
        status, trigger.bucket, trigger.key, run_id=run_id, prompts=len(spec.items), job_id=record["job_id"]
    )


def read_prompt_object(s3: Any, trigger: Trigger) -> PromptObject | None:
    """The event's version of the object, or None when it was replaced or deleted since."""
    kwargs: dict[str, Any] = {"Bucket": trigger.bucket, "Key": trigger.key}
    if trigger.version_id:
        kwargs["VersionId"] = trigger.version_id
    elif trigger.etag:
        kwargs["IfMatch"] = trigger.etag  # unversioned bucket: don't run newer content under this event's id
    try:
        response = s3.get_object(**kwargs)
    except ClientError as exc:
        if exc.response["Error"]["Code"] in (
            "PreconditionFailed",
            "NoSuchKey",
            "NoSuchVersion",
            "412",
            "404",
        ):
            return None
        raise
    etag = trigger.etag or response["ETag"]
    return PromptObject(response["Body"].read(), etag.strip('"'), response.get("VersionId"))


def job_definition_for(settings: SubmitSettings, prompt_file: PromptFile) -> str:
    definition = settings.job_definition_for(prompt_file.gpus)
    if definition is None:
        offered = ", ".join(str(g) for g in settings.offered_gpus)
        raise PromptFileError(
            [FieldError(f"this deployment offers gpus {offered}; got {prompt_file.gpus}", field="gpus")]
        )
    return definition


def resolve(
    prompt_file: PromptFile,
    *,
    run_id: str,
    trigger: Trigger,
    obj: PromptObject,
    settings: SubmitSettings,
    batch: Any,
) -> RunSpec:
    source = Source(bucket=trigger.bucket, key=trigger.key, etag=obj.etag)
    spec = resolve_run(prompt_file, run_id=run_id, source=source, default_model=settings.model)
    per_job = settings.items_per_job
    if per_job is None:  # "auto": one load for several items, within the time limit and the fleet
        slots = parallel_slots(batch, job_queue=settings.job_queue, job_definition=settings.job_definition)
        per_job = choose_items_per_job(
            spec.items, max_job_minutes=settings.max_job_minutes, parallel_slots=slots
        )
    return spec.model_copy(update={"items_per_job": per_job})


def write_rejection(s3: Any, trigger: Trigger, obj: PromptObject, err: PromptFileError) -> str:
    key = layout.rejected_key(trigger.key)
    record = {
        "source": {
            "bucket": trigger.bucket,
            "key": trigger.key,
            "etag": obj.etag,
            "version_id": obj.version_id,
        },
        "rejected_at": _now(),
        "error_count": len(err.errors),
        "errors": [e.to_dict() for e in err.errors],
        "messages": [e.describe() for e in err.errors],  # the same lines `wanbatch validate` prints
    }
    _put_json(s3, trigger.bucket, key, record)
    return key


def submit_run(
    *,
    request: dict[str, str],
    spec: RunSpec,
    job_definition: str,
    settings: SubmitSettings,
    s3: Any,
    batch: Any,
    origin: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Write spec.json, SubmitJob `wan-<run_id>` unless it exists, write run.json; returns run.json's content.

    Safe to re-run after a crash at any point: the spec is deterministic and an existing job is reused.
    """
    bucket, run_id = spec.source.bucket, spec.run_id
    if request.get("run_id") != run_id:
        raise ValueError(f"the idempotency key {request!r} is not the spec's run_id {run_id!r}")
    existing = _get_json(s3, bucket, layout.run_record_key(run_id))
    if existing is not None:  # submitted long ago, after its idempotency record expired
        return {**existing, "duplicate": True}
    spec_key = layout.spec_key(run_id)
    _put_json(s3, bucket, spec_key, spec.model_dump(mode="json"))
    name = layout.job_name(run_id)
    job = find_job(batch, job_queue=settings.job_queue, name=name)
    if job is None:
        job = submit_job(
            batch,
            spec=spec,
            name=name,
            job_queue=settings.job_queue,
            job_definition=job_definition,
            spec_uri=layout.s3_uri(bucket, spec_key),
        )
    else:
        logger.warning("job already exists; not submitting again", extra={"job_id": job["jobId"]})
    record = {
        "run_id": run_id,
        "source": spec.source.model_dump(),
        "spec_uri": layout.s3_uri(bucket, spec_key),
        "job_id": job["jobId"],
        "job_name": name,
        "job_queue": settings.job_queue,
        "job_definition": job_definition,
        "item_count": len(spec.items),
        "items_per_job": spec.items_per_job,
        "children": spec.num_children,
        "gpus": spec.gpus,
        "model": spec.model.model_dump(),
        "submitted_at": _now(),
        **(origin or {}),
    }
    _put_json(s3, bucket, layout.run_record_key(run_id), record)
    return record


def find_job(batch: Any, *, job_queue: str, name: str) -> dict[str, Any] | None:
    """A job already named `name` in the queue, in any status (a JOB_NAME filter ignores jobStatus)."""
    pages = batch.get_paginator("list_jobs").paginate(
        jobQueue=job_queue, filters=[{"name": "JOB_NAME", "values": [name]}]
    )
    for page in pages:
        for job in page["jobSummaryList"]:
            if job["jobName"] == name and ":" not in job["jobId"]:  # an array parent, not one of its children
                return job
    return None


def submit_job(
    batch: Any, *, spec: RunSpec, name: str, job_queue: str, job_definition: str, spec_uri: str
) -> dict[str, Any]:
    params: dict[str, Any] = {
        "jobName": name,
        "jobQueue": job_queue,
        "jobDefinition": job_definition,
        "containerOverrides": {"environment": [{"name": "SPEC_URI", "value": spec_uri}]},
    }
    if spec.num_children >= 2:  # Batch arrays need size >= 2
        params["arrayProperties"] = {"size": spec.num_children}
    return batch.submit_job(**params)


def _put_json(s3: Any, bucket: str, key: str, body: dict[str, Any]) -> None:
    s3.put_object(
        Bucket=bucket,
        Key=key,
        Body=json.dumps(body, ensure_ascii=False, indent=1).encode(),
        ContentType="application/json",
    )


def _get_json(s3: Any, bucket: str, key: str) -> dict[str, Any] | None:
    try:
        return json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    except ClientError as exc:
        if exc.response["Error"]["Code"] in ("NoSuchKey", "404"):
            return None
        raise


def _now() -> str:
    return _iso(datetime.now(UTC))


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
