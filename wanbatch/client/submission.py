"""Upload a prompt file under prompts/ and wait for the submit Lambda's answer: run.json or a rejection."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from wanbatch import layout
from wanbatch.client.runs import get_json
from wanbatch.errors import RejectedError, WaitTimeout
from wanbatch.spec import slugify_stem


@dataclass(frozen=True)
class Upload:
    bucket: str
    key: str
    etag: str  # without quotes, as run.json's source records it
    uploaded_at: datetime  # S3's LastModified: run.json written for this upload is not older
    earlier_runs: frozenset[str] = (
        frozenset()
    )  # run.json keys that existed before (same content, same second)


def prompt_key(name: str, *, prefix: str = "") -> str:
    """`prompts/<prefix>/<name>`; the name keeps its .json/.jsonl suffix (the Lambda ignores others)."""
    folder = prefix.strip("/")
    return f"{layout.PROMPTS_PREFIX}{folder + '/' if folder else ''}{name}"


def upload_prompt_file(s3: Any, bucket: str, key: str, body: bytes) -> Upload:
    earlier = frozenset(entry["Key"] for entry in _run_records(s3, bucket, key))
    etag = s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType="application/json")["ETag"]
    head = s3.head_object(Bucket=bucket, Key=key)
    return Upload(bucket, key, etag.strip('"'), head["LastModified"], earlier)


def _run_records(s3: Any, bucket: str, key: str) -> list[dict[str, Any]]:
    """Listing entries of the run.json files a prompt file at `key` can have started."""
    # run ids start with the key's stem, so one prefix listing covers this file's runs only.
    prefix = f"{layout.RUNS_PREFIX}{slugify_stem(key)}-"
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return [
        entry for page in pages for entry in page.get("Contents", []) if entry["Key"].endswith("/run.json")
    ]


def find_answer(s3: Any, upload: Upload) -> dict[str, Any] | None:
    """run.json whose source is this upload; RejectedError if the Lambda rejected it; else None (not yet)."""
    for entry in _run_records(s3, upload.bucket, upload.key):
        # The same content uploaded before has the same key and etag: only a run.json new since counts.
        if entry["Key"] in upload.earlier_runs or entry["LastModified"] < upload.uploaded_at:
            continue
        record = get_json(s3, upload.bucket, entry["Key"])
        source = (record or {}).get("source") or {}
        if source.get("key") == upload.key and str(source.get("etag", "")).strip('"') == upload.etag:
            return record
    rejection = get_json(s3, upload.bucket, layout.rejected_key(upload.key))
    if rejection and str(rejection.get("source", {}).get("etag", "")).strip('"') == upload.etag:
        raise RejectedError(upload.key, rejection.get("messages") or [str(rejection.get("errors"))])
    return None


def wait_for_run(
    s3: Any, upload: Upload, *, timeout_s: float, interval_s: float,
    tick: Callable[[float], None] = lambda elapsed: None,
) -> dict[str, Any]:  # fmt: skip
    """Poll until the submit Lambda answers; WaitTimeout after `timeout_s`."""
    started = time.monotonic()
    while True:
        record = find_answer(s3, upload)
        if record is not None:
            return record
        elapsed = time.monotonic() - started
        if elapsed >= timeout_s:
            raise WaitTimeout(
                f"no run for s3://{upload.bucket}/{upload.key} after {timeout_s:g} s: the submit Lambda may "
                "be slow or failing (see its CloudWatch logs); the upload stays, and its run will appear "
                "in runs/ when the Lambda gets to it"
            )
        tick(elapsed)
        time.sleep(min(interval_s, max(0.0, timeout_s - elapsed)))
