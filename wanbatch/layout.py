"""Contract 2: every S3 key the system reads or writes, built in one place."""

from __future__ import annotations

from urllib.parse import urlparse

PROMPTS_PREFIX = "prompts/"
SCHEDULES_PREFIX = "schedules/"
RUNS_PREFIX = "runs/"
RESUME_PREFIX = "resume/"
REJECTED_PREFIX = "rejected/"
PROMPT_SUFFIXES = (".json", ".jsonl")


def run_prefix(run_id: str) -> str:
    return f"{RUNS_PREFIX}{run_id}/"


def spec_key(run_id: str) -> str:
    return f"{run_prefix(run_id)}spec.json"


def run_record_key(run_id: str) -> str:
    return f"{run_prefix(run_id)}run.json"


def video_key(run_id: str, item_id: str) -> str:
    return f"{run_prefix(run_id)}{item_id}.mp4"


def manifest_key(run_id: str, item_id: str) -> str:
    return f"{run_prefix(run_id)}{item_id}.manifest.json"


def error_key(run_id: str, item_id: str) -> str:
    return f"{run_prefix(run_id)}{item_id}.error.json"


def child_error_key(run_id: str, array_index: int) -> str:
    """Error record of an array child that failed before it knew its items (bad spec or index)."""
    return f"{run_prefix(run_id)}child-{array_index:05d}.error.json"


def progress_key(run_id: str, item_id: str) -> str:
    return f"{run_prefix(run_id)}{item_id}.progress.json"


def resume_prefix(run_id: str, item_id: str) -> str:
    return f"{RESUME_PREFIX}{run_id}/{item_id}/"


def rejected_key(source_key: str) -> str:
    return f"{REJECTED_PREFIX}{source_key}.error.json"


def job_name(run_id: str) -> str:
    return f"wan-{run_id}"


def run_id_from_job_name(name: str) -> str | None:
    return name[len("wan-"):] if name.startswith("wan-") else None


def s3_uri(bucket: str, key: str) -> str:
    return f"s3://{bucket}/{key}"


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """`s3://bucket/key` -> (bucket, key); raises ValueError for anything else."""
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc or not parsed.path.lstrip("/"):
        raise ValueError(f"not an s3://bucket/key URI: {uri!r}")
    return parsed.netloc, parsed.path.lstrip("/")


def is_prompt_key(key: str) -> bool:
    return key.startswith((PROMPTS_PREFIX, SCHEDULES_PREFIX)) and key.endswith(PROMPT_SUFFIXES)
