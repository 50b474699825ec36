"""The submit Lambda's deployment settings, read once from the environment the stack sets."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from wanbatch.errors import ConfigError
from wanbatch.spec import DEFAULT_MODEL_ID, DEFAULT_MODEL_REVISION, ModelRef


@dataclass(frozen=True)
class SubmitSettings:
    job_queue: str
    job_definition: str
    idempotency_table: str
    model: ModelRef
    items_per_job: int | None = 1  # None means "auto" (wanbatch.packing)
    max_job_minutes: float = 60.0
    gpu_job_definitions: dict[int, str] = field(default_factory=dict)  # gpus > 1 -> job definition

    @property
    def offered_gpus(self) -> list[int]:
        return sorted({1, *self.gpu_job_definitions})

    def job_definition_for(self, gpus: int) -> str | None:
        """The job definition for a file's `gpus`, or None when this deployment offers no such size."""
        return self.job_definition if gpus == 1 else self.gpu_job_definitions.get(gpus)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> SubmitSettings:
        env = os.environ if env is None else env
        return cls(
            job_queue=_required(env, "JOB_QUEUE"),
            job_definition=_required(env, "JOB_DEFINITION"),
            idempotency_table=_required(env, "IDEMPOTENCY_TABLE"),
            model=ModelRef(
                id=env.get("MODEL_ID") or DEFAULT_MODEL_ID,
                revision=env.get("MODEL_REVISION") or DEFAULT_MODEL_REVISION,
            ),
            items_per_job=_items_per_job(env.get("ITEMS_PER_JOB", "1")),
            max_job_minutes=_positive_float(env, "MAX_JOB_MINUTES", "60"),
            gpu_job_definitions=_gpu_job_definitions(env.get("GPU_JOB_DEFINITIONS", "")),
        )


def _required(env: Mapping[str, str], name: str) -> str:
    value = env.get(name, "").strip()
    if not value:
        raise ConfigError(f"environment variable {name} is not set (the stack sets it)")
    return value


def _items_per_job(text: str) -> int | None:
    text = text.strip().lower() or "1"
    if text == "auto":
        return None
    if text.isdigit() and int(text) >= 1:
        return int(text)
    raise ConfigError(f"ITEMS_PER_JOB must be 'auto' or a positive integer, got {text!r}")


def _positive_float(env: Mapping[str, str], name: str, default: str) -> float:
    text = env.get(name, "").strip() or default
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < float("inf"):
        raise ConfigError(f"{name} must be a positive number, got {text!r}")
    return value


def _gpu_job_definitions(text: str) -> dict[int, str]:
    if not text.strip():
        return {}
    try:
        raw = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"GPU_JOB_DEFINITIONS is not JSON: {exc}") from None
    if not isinstance(raw, dict) or not all(
        isinstance(key, str) and key.isdigit() and int(key) >= 1 and isinstance(value, str) and value
        for key, value in raw.items()
    ):
        raise ConfigError(
            'GPU_JOB_DEFINITIONS must be a JSON object {"<gpus>": "<job definition arn>"}, got ' + text
        )
    return {int(key): value for key, value in raw.items()}
