"""The deployment's configuration: cdk.json context read once into one frozen dataclass.

This is the only module that names context keys. `app.py` calls `AppConfig.from_context` and passes
the result down; constructs take keyword-only arguments and never read context or the environment.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from wanbatch.layout import PROMPT_SUFFIXES, SCHEDULES_PREFIX
from wanbatch.spec import DEFAULT_MODEL_ID, DEFAULT_MODEL_REVISION
from wanbatch.worker_options import QUANTIZATION_MODES, STEP_CACHES

CAPACITY_MODES = ("spot", "spot-then-on-demand", "on-demand")
NETWORK_MODES = ("public", "private")
IMAGE_MODES = ("build", "pull")
CACHE_REMOVAL = ("retain", "destroy")


@dataclass(frozen=True)
class InstanceSpec:
    vcpus: int
    memory_gib: int
    gpus: int


# Published sizes of the instance types we size jobs for (EC2 instance-type pages).
INSTANCE_SPECS: dict[str, InstanceSpec] = {
    "g6e.xlarge": InstanceSpec(4, 32, 1),
    "g6e.2xlarge": InstanceSpec(8, 64, 1),
    "g6e.4xlarge": InstanceSpec(16, 128, 1),
    "g6e.8xlarge": InstanceSpec(32, 256, 1),
    "g6e.16xlarge": InstanceSpec(64, 512, 1),
    "g6e.12xlarge": InstanceSpec(48, 384, 4),
    "g6e.24xlarge": InstanceSpec(96, 768, 4),
    "g6e.48xlarge": InstanceSpec(192, 1536, 8),
    "p5.48xlarge": InstanceSpec(192, 2048, 8),
    "m6i.large": InstanceSpec(2, 8, 0),
    "m6i.xlarge": InstanceSpec(4, 16, 0),
    "m6i.2xlarge": InstanceSpec(8, 32, 0),
    "m7i.2xlarge": InstanceSpec(8, 32, 0),
    "c6i.2xlarge": InstanceSpec(8, 16, 0),
}
# The ECS agent registers less memory than the instance has (kernel, agent, page cache for the
# NVMe copy). Requesting more than the registered amount leaves a job RUNNABLE forever, so jobs
# ask for 92% of the nominal size (g6e.4xlarge: 117 GiB of 128) and one vCPU less than the host.
MEMORY_FRACTION = 0.92

_SCHEDULE_NAME = re.compile(r"^[A-Za-z0-9_-]{1,48}$")
_S3_URI = re.compile(r"^s3://([a-z0-9][a-z0-9.-]{1,61}[a-z0-9])(?:/(.*))?$")


class ConfigError(ValueError):
    """A cdk.json context value is missing or invalid; the message names the key."""


@dataclass(frozen=True)
class JobSize:
    """What one job of a job definition requests: fits the smallest instance type listed."""

    gpus: int
    vcpus: int
    memory_gib: int


@dataclass(frozen=True)
class ScheduleConfig:
    name: str
    expression: str  # cron(...), rate(...) or at(...), EventBridge Scheduler syntax
    key: str  # the prompt file under schedules/
    timezone: str = "UTC"


@dataclass(frozen=True)
class MultiGpuConfig:
    gpus: int
    instance_types: tuple[str, ...]
    max_vcpus: int


@dataclass(frozen=True)
class S3Location:
    bucket: str
    prefix: str  # "" or ending in "/"

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"


@dataclass(frozen=True)
class AppConfig:
    """Everything a user can configure in cdk.json; defaults are what `cdk deploy` gets untouched."""

    stack_name: str = "WanBatch"
    account: str | None = None
    region: str | None = None
    availability_zones: tuple[str, ...] = ()
    network: str = "public"
    instance_types: tuple[str, ...] = ("g6e.4xlarge",)
    max_vcpus: int = 64
    capacity: str = "spot"
    root_volume_gib: int = 150
    model_id: str = DEFAULT_MODEL_ID
    model_revision: str = DEFAULT_MODEL_REVISION
    items_per_job: str = "auto"  # "auto" or a positive integer, as text (the Lambda's env var)
    max_job_minutes: int = 240
    retry_attempts: int = 5
    runnable_timeout_minutes: int = 240
    schedules: tuple[ScheduleConfig, ...] = ()
    image_mode: str = "build"
    image_uri: str | None = None
    notification_email: str | None = None
    log_retention_days: int = 30
    resume_expiry_days: int = 7
    cache_removal: str = "retain"
    cache_fill_instance_types: tuple[str, ...] = ("m6i.2xlarge",)
    multi_gpu: MultiGpuConfig | None = None
    weights_s3_mirror: S3Location | None = None
    powertools_layer_version: int = 27
    quantization: str = "none"
    step_cache: str = "none"
    job_sizes: dict[int, JobSize] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        _check_choice("network", self.network, NETWORK_MODES)
        _check_choice("capacity", self.capacity, CAPACITY_MODES)
        _check_choice("image_mode", self.image_mode, IMAGE_MODES)
        _check_choice("cache_removal", self.cache_removal, CACHE_REMOVAL)
        _check_choice("quantization", self.quantization, QUANTIZATION_MODES)
        _check_choice("step_cache", self.step_cache, STEP_CACHES)
        if self.image_mode == "pull" and not self.image_uri:
            raise ConfigError("image_mode 'pull' needs image_uri, e.g. <registry>/<repo>:<tag>")
        if not self.instance_types:
            raise ConfigError("instance_types must list at least one instance type")
        per_job = self.items_per_job
        if per_job != "auto" and not (per_job.isdigit() and int(per_job) > 0):
            raise ConfigError(f"items_per_job must be 'auto' or a positive integer, got {per_job!r}")
        for name in ("max_vcpus", "root_volume_gib", "max_job_minutes", "retry_attempts"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if not 1 <= self.retry_attempts <= 10:
            raise ConfigError(f"retry_attempts must be 1..10 (AWS Batch's limit), got {self.retry_attempts}")
        if not 10 <= self.runnable_timeout_minutes <= 1440:
            raise ConfigError("runnable_timeout_minutes must be 10..1440 (AWS Batch's limits)")
        names = [s.name for s in self.schedules]
        if len(names) != len(set(names)):
            raise ConfigError(f"schedule names must be unique, got {names}")
        sizes = {1: job_size(self.instance_types, gpus=1, key="instance_types")}
        if self.multi_gpu:
            sizes[self.multi_gpu.gpus] = job_size(
                self.multi_gpu.instance_types, gpus=self.multi_gpu.gpus, key="multi_gpu.instance_types"
            )
        object.__setattr__(self, "job_sizes", sizes)

    @property
    def gpu_job_size(self) -> JobSize:
        return self.job_sizes[1]

    @property
    def cache_fill_size(self) -> JobSize:
        return job_size(self.cache_fill_instance_types, gpus=0, key="cache_fill_instance_types")

    @property
    def warm_model(self) -> str:
        """WARM_MODEL for the cache-fill job (contract 5)."""
        return f"{self.model_id}@{self.model_revision}"

    @classmethod
    def from_context(cls, get: Callable[[str], Any], *, env: Mapping[str, str] | None = None) -> AppConfig:
        """Build from `app.node.try_get_context`; `env` supplies CDK_DEFAULT_ACCOUNT/REGION fallbacks."""
        env = env or {}
        defaults = cls()

        def value(key: str) -> Any:
            found = get(key)
            return getattr(defaults, key, None) if found is None else found

        return cls(
            stack_name=str(value("stack_name")),
            account=value("account") or env.get("CDK_DEFAULT_ACCOUNT") or None,
            region=value("region") or env.get("CDK_DEFAULT_REGION") or None,
            availability_zones=_str_tuple("availability_zones", value("availability_zones")),
            network=str(value("network")),
            instance_types=_str_tuple("instance_types", value("instance_types")),
            max_vcpus=_int("max_vcpus", value("max_vcpus")),
            capacity=str(value("capacity")),
            root_volume_gib=_int("root_volume_gib", value("root_volume_gib")),
            model_id=str(value("model_id")),
            model_revision=str(value("model_revision")),
            items_per_job=str(value("items_per_job")),
            max_job_minutes=_int("max_job_minutes", value("max_job_minutes")),
            retry_attempts=_int("retry_attempts", value("retry_attempts")),
            runnable_timeout_minutes=_int("runnable_timeout_minutes", value("runnable_timeout_minutes")),
            schedules=tuple(_schedule(i, s) for i, s in enumerate(value("schedules"))),
            image_mode=str(value("image_mode")),
            image_uri=value("image_uri") or None,
            notification_email=value("notification_email") or None,
            log_retention_days=_int("log_retention_days", value("log_retention_days")),
            resume_expiry_days=_int("resume_expiry_days", value("resume_expiry_days")),
            cache_removal=str(value("cache_removal")),
            cache_fill_instance_types=_str_tuple(
                "cache_fill_instance_types", value("cache_fill_instance_types")
            ),
            multi_gpu=_multi_gpu(value("multi_gpu")),
            weights_s3_mirror=_s3_location("weights_s3_mirror", value("weights_s3_mirror")),
            powertools_layer_version=_int("powertools_layer_version", value("powertools_layer_version")),
            quantization=str(value("quantization")),
            step_cache=str(value("step_cache")),
        )

    @property
    def worker_presets(self) -> dict[str, str]:
        """The job definitions' QUANTIZATION and STEP_CACHE (worker.presets)."""
        return {"QUANTIZATION": self.quantization, "STEP_CACHE": self.step_cache}


def job_size(instance_types: tuple[str, ...], *, gpus: int, key: str) -> JobSize:
    """The largest request that fits every listed type: one vCPU and 6% of memory left to the host."""
    unknown = [t for t in instance_types if t not in INSTANCE_SPECS]
    if unknown:
        known = ", ".join(sorted(INSTANCE_SPECS))
        raise ConfigError(f"{key}: unknown instance type(s) {unknown}; use one of: {known}")
    specs = [INSTANCE_SPECS[t] for t in instance_types]
    too_few = [t for t, s in zip(instance_types, specs, strict=True) if s.gpus < gpus]
    if too_few:
        raise ConfigError(f"{key}: {too_few} have fewer than the {gpus} GPU(s) a job needs")
    return JobSize(
        gpus=gpus,
        vcpus=max(1, min(s.vcpus for s in specs) - 1),
        memory_gib=int(min(s.memory_gib for s in specs) * MEMORY_FRACTION),
    )


def _check_choice(key: str, got: str, choices: tuple[str, ...]) -> None:
    if got not in choices:
        raise ConfigError(f"{key} must be one of {', '.join(choices)}; got {got!r}")


def _int(key: str, raw: Any) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int | str) or not str(raw).strip().lstrip("-").isdigit():
        raise ConfigError(f"{key} must be an integer, got {raw!r}")
    return int(raw)


def _str_tuple(key: str, raw: Any) -> tuple[str, ...]:
    if isinstance(raw, str):
        raw = [part.strip() for part in raw.split(",") if part.strip()]  # `-c key=a,b` on the CLI
    if not isinstance(raw, list | tuple) or not all(isinstance(x, str) and x for x in raw):
        raise ConfigError(f"{key} must be a list of strings, got {raw!r}")
    return tuple(raw)


def _schedule(index: int, raw: Any) -> ScheduleConfig:
    where = f"schedules[{index}]"
    if not isinstance(raw, dict) or not {"name", "expression", "key"} <= raw.keys():
        raise ConfigError(f"{where} must be an object with name, expression and key; got {raw!r}")
    extra = set(raw) - {"name", "expression", "key", "timezone"}
    if extra:
        raise ConfigError(f"{where}: unknown field(s) {sorted(extra)}")
    name, expression, key = str(raw["name"]), str(raw["expression"]), str(raw["key"])
    if not _SCHEDULE_NAME.match(name):
        raise ConfigError(f"{where}.name must match [A-Za-z0-9_-]{{1,48}}, got {name!r}")
    if not re.match(r"^(cron|rate|at)\(.+\)$", expression):
        raise ConfigError(f"{where}.expression must be cron(...), rate(...) or at(...), got {expression!r}")
    if not key.startswith(SCHEDULES_PREFIX) or not key.endswith(PROMPT_SUFFIXES):
        raise ConfigError(f"{where}.key must be {SCHEDULES_PREFIX}<name>.json or .jsonl, got {key!r}")
    return ScheduleConfig(name=name, expression=expression, key=key, timezone=str(raw.get("timezone", "UTC")))


def _multi_gpu(raw: Any) -> MultiGpuConfig | None:
    if raw is None:
        return None
    if not isinstance(raw, dict) or "gpus" not in raw or "instance_types" not in raw:
        raise ConfigError(f"multi_gpu must be {{'gpus': N, 'instance_types': [...]}}, got {raw!r}")
    gpus = _int("multi_gpu.gpus", raw["gpus"])
    if gpus < 2:
        raise ConfigError(f"multi_gpu.gpus must be at least 2 (1 GPU is the default queue), got {gpus}")
    types = _str_tuple("multi_gpu.instance_types", raw["instance_types"])
    # Default: room for one instance of the largest listed type (unknown types fail in job_size).
    one_instance = max((INSTANCE_SPECS[t].vcpus for t in types if t in INSTANCE_SPECS), default=48)
    max_vcpus = _int("multi_gpu.max_vcpus", raw.get("max_vcpus", one_instance))
    return MultiGpuConfig(gpus=gpus, instance_types=types, max_vcpus=max_vcpus)


def _s3_location(key: str, raw: Any) -> S3Location | None:
    if raw is None or raw == "":
        return None
    if isinstance(raw, dict) and "bucket" in raw:
        bucket, prefix = str(raw["bucket"]), str(raw.get("prefix", ""))
    elif isinstance(raw, str) and (match := _S3_URI.match(raw)):
        bucket, prefix = match.group(1), match.group(2) or ""
    else:
        raise ConfigError(f"{key} must be s3://bucket/prefix or {{'bucket': ..., 'prefix': ...}}: {raw!r}")
    prefix = prefix.strip("/")
    return S3Location(bucket=bucket, prefix=f"{prefix}/" if prefix else "")
