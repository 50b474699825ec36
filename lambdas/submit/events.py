"""The three event shapes the submit Lambda accepts, reduced to one `Trigger` each.

- S3 event notifications (`Records[].s3`): keys are URL-encoded (`+` for spaces, %-escapes), so decoded.
- EventBridge "Object Created" from S3: `detail.object.key` is the raw key (S3's EventBridge events do
  not URL-encode it; decoding would corrupt keys containing `+` or `%`).
- EventBridge Scheduler: `{"source": "wanbatch.schedule", "key": "schedules/<name>.json", "time": ...}`,
  with the bucket from the environment; each firing is its own run, named by its time.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import unquote_plus

SCHEDULE_SOURCE = "wanbatch.schedule"


@dataclass(frozen=True)
class Trigger:
    """One prompt file to run, and what makes its run id unique."""

    bucket: str
    key: str
    time: datetime
    etag: str = ""  # empty for schedules: read from the object
    version_id: str | None = None
    sequencer: str = ""
    scheduled: bool = False


class UnsupportedEvent(ValueError):
    """The event is none of the shapes this Lambda accepts."""


def parse_time(text: str) -> datetime:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except (AttributeError, ValueError):
        raise UnsupportedEvent(f"event time is not an ISO-8601 timestamp: {text!r}") from None


def triggers_from_event(event: dict[str, Any], *, default_bucket: str | None = None) -> list[Trigger]:
    """Every prompt file an event names (an S3 notification may carry several records)."""
    if not isinstance(event, dict):
        raise UnsupportedEvent(f"event is not an object: {type(event).__name__}")
    try:
        return _triggers(event, default_bucket)
    except (KeyError, TypeError, AttributeError) as exc:
        raise UnsupportedEvent(f"event is missing or mistypes a field: {exc!r}") from None


def _triggers(event: dict[str, Any], default_bucket: str | None) -> list[Trigger]:
    if "Records" in event:
        return [
            _from_s3_record(record)
            for record in event["Records"]
            if str(record.get("eventName", "")).startswith("ObjectCreated:")
        ]
    if event.get("source") == "aws.s3" and event.get("detail-type") == "Object Created":
        return [_from_eventbridge(event)]
    if event.get("source") == SCHEDULE_SOURCE:
        return [_from_schedule(event, default_bucket)]
    raise UnsupportedEvent(
        "expected an S3 notification, an EventBridge 'Object Created' event or a wanbatch.schedule payload"
    )


def _from_s3_record(record: dict[str, Any]) -> Trigger:
    s3 = record["s3"]
    obj = s3["object"]
    return Trigger(
        bucket=s3["bucket"]["name"],
        key=unquote_plus(obj["key"]),
        time=parse_time(record["eventTime"]),
        etag=obj.get("eTag", ""),
        version_id=obj.get("versionId") or None,
        sequencer=obj.get("sequencer", ""),
    )


def _from_eventbridge(event: dict[str, Any]) -> Trigger:
    detail = event["detail"]
    obj = detail["object"]
    return Trigger(
        bucket=detail["bucket"]["name"],
        key=obj["key"],
        time=parse_time(event["time"]),
        etag=obj.get("etag", ""),
        version_id=obj.get("version-id") or None,
        sequencer=obj.get("sequencer", ""),
    )


def _from_schedule(event: dict[str, Any], default_bucket: str | None) -> Trigger:
    bucket = event.get("bucket") or default_bucket
    key = event.get("key")
    if not bucket or not isinstance(key, str) or not key:
        raise UnsupportedEvent(
            "a wanbatch.schedule payload needs 'key' (and 'bucket', or BUCKET in the environment)"
        )
    time = event.get("time", "")
    # The firing time makes each firing its own run; it also feeds the run id's hash.
    return Trigger(
        bucket=bucket, key=key, time=parse_time(time), sequencer=f"schedule@{time}", scheduled=True
    )
