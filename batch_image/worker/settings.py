"""The worker's configuration, read from the environment once (contract 5) and passed down."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from wanbatch.errors import SpecError
from wanbatch.worker_options import (
    ATTENTION_BACKENDS,
    OFFLOAD_MODES,
    QUANTIZATION_MODES,
    STEP_CACHES,
    TEXT_ENCODER_DEVICES,
)
from worker.pipeline import COMPILE_MODES


@dataclass(frozen=True)
class Settings:
    spec_uri: str | None
    array_index: int = 0
    attempt: int = 1
    model_cache_dir: Path = Path("/mnt/models")
    local_cache_dir: Path | None = None
    s3_mirror: str = ""  # MODEL_S3_MIRROR: s3://bucket/prefix/ holding a copy of the weights ("" = none)
    offload: str = "auto"
    text_encoder_device: str = "auto"
    attention_backend: str = "auto"
    compile_mode: str = "auto"  # COMPILE: auto | none | regional (see worker.pipeline)
    quantization: str = "none"  # QUANTIZATION: none | fp8 (a fast preset, worker.presets)
    step_cache: str = "none"  # STEP_CACHE: none | taylorseer (a fast preset, worker.presets)
    warm_model: str | None = None  # "<repo id>@<revision>": fill the cache and exit
    resume_save_interval_s: float = 0.0  # 0: save the state after every step
    progress_every_steps: int = 5
    spot_poll_s: float = 5.0
    test_step_delay_s: float = 0.0  # tests only: stretch each step so a kill lands mid-run

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Settings:
        def number(name: str, default, kind=int):
            raw = env.get(name, "").strip()
            try:
                return kind(raw) if raw else default
            except ValueError:
                raise SpecError(f"{name} must be a number, got {raw!r}") from None

        def choice(name: str, allowed: tuple[str, ...], default: str = "auto") -> str:
            value = env.get(name, default).strip() or default
            if value not in allowed:
                raise SpecError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
            return value

        settings = cls(
            spec_uri=env.get("SPEC_URI") or None,
            array_index=number("AWS_BATCH_JOB_ARRAY_INDEX", 0),
            attempt=number("AWS_BATCH_JOB_ATTEMPT", 1),
            model_cache_dir=Path(env.get("MODEL_CACHE_DIR") or "/mnt/models"),
            local_cache_dir=Path(env["LOCAL_CACHE_DIR"]) if env.get("LOCAL_CACHE_DIR") else None,
            s3_mirror=env.get("MODEL_S3_MIRROR", "").strip(),
            offload=choice("OFFLOAD", OFFLOAD_MODES),
            text_encoder_device=choice("TEXT_ENCODER_DEVICE", TEXT_ENCODER_DEVICES),
            attention_backend=choice("ATTENTION_BACKEND", ATTENTION_BACKENDS),
            compile_mode=choice("COMPILE", COMPILE_MODES),
            quantization=choice("QUANTIZATION", QUANTIZATION_MODES, "none"),
            step_cache=choice("STEP_CACHE", STEP_CACHES, "none"),
            warm_model=env.get("WARM_MODEL") or None,
            resume_save_interval_s=number("RESUME_SAVE_INTERVAL_S", 0.0, float),
            progress_every_steps=number("PROGRESS_EVERY_STEPS", 5),
            spot_poll_s=number("SPOT_POLL_INTERVAL_S", 5.0, float),
            test_step_delay_s=number("WANBATCH_TEST_STEP_DELAY", 0.0, float),
        )
        if settings.spec_uri is None and settings.warm_model is None:
            raise SpecError(
                "SPEC_URI is not set: give s3://BUCKET/runs/<run_id>/spec.json or a local spec path"
            )
        if settings.array_index < 0 or settings.attempt < 1:
            raise SpecError("AWS_BATCH_JOB_ARRAY_INDEX must be >= 0 and AWS_BATCH_JOB_ATTEMPT >= 1")
        return settings
