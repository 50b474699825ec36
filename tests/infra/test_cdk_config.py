"""cdk.json context -> AppConfig: defaults, overrides and clear errors for bad values (no synthesis)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from stacks.bundling import _ecr_reference, allow_only
from stacks.compute import WORKER_COMMAND, retry_strategies
from stacks.config import AppConfig, ConfigError, JobSize, S3Location

CDK_JSON = json.loads((Path(__file__).resolve().parents[2] / "cdk.json").read_text())


def config(**context: Any) -> AppConfig:
    merged = {**CDK_JSON["context"], **context}
    return AppConfig.from_context(merged.get, env={})


def test_cdk_json_defaults_match_the_dataclass_defaults() -> None:
    from_json = config()
    assert from_json == AppConfig(region="us-east-1")
    assert from_json.gpu_job_size == JobSize(gpus=1, vcpus=15, memory_gib=117)
    assert from_json.warm_model == "Wan-AI/Wan2.2-T2V-A14B-Diffusers@main"


def test_cdk_json_app_runs_app_py_with_the_venv_python() -> None:
    assert CDK_JSON["app"] == "python3 app.py"


def test_environment_supplies_account_and_region_when_context_does_not() -> None:
    got = AppConfig.from_context(
        {"region": None}.get, env={"CDK_DEFAULT_ACCOUNT": "123456789012", "CDK_DEFAULT_REGION": "eu-west-1"}
    )
    assert (got.account, got.region) == ("123456789012", "eu-west-1")


def test_multi_gpu_sizes_a_second_job_definition() -> None:
    got = config(multi_gpu={"gpus": 4, "instance_types": ["g6e.12xlarge"]})
    assert got.job_sizes[4] == JobSize(gpus=4, vcpus=47, memory_gib=353)
    assert got.multi_gpu is not None and got.multi_gpu.max_vcpus == 48


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("s3://bucket-a/wan/", S3Location("bucket-a", "wan/")),
        ("s3://bucket-a", S3Location("bucket-a", "")),
        ({"bucket": "bucket-b", "prefix": "/x/y"}, S3Location("bucket-b", "x/y/")),
    ],
)
def test_weight_mirror_forms(raw: Any, expected: S3Location) -> None:
    assert config(weights_s3_mirror=raw).weights_s3_mirror == expected


def test_cli_style_comma_separated_instance_types() -> None:
    assert config(instance_types="g6e.4xlarge, g6e.8xlarge").instance_types == ("g6e.4xlarge", "g6e.8xlarge")


@pytest.mark.parametrize(
    ("context", "message"),
    [
        ({"capacity": "cheap"}, "capacity must be one of"),
        ({"network": "vpn"}, "network must be one of"),
        ({"image_mode": "pull"}, "needs image_uri"),
        ({"instance_types": ["g6e.4xlarge", "z9.huge"]}, "unknown instance type"),
        ({"instance_types": ["m6i.2xlarge"]}, "fewer than the 1 GPU"),
        ({"multi_gpu": {"gpus": 4, "instance_types": ["g6e.4xlarge"]}}, "fewer than the 4 GPU"),
        ({"multi_gpu": {"gpus": 1, "instance_types": ["g6e.12xlarge"]}}, "at least 2"),
        ({"items_per_job": "many"}, "items_per_job"),
        ({"quantization": "int4"}, "quantization must be one of"),
        ({"step_cache": "magcache"}, "step_cache must be one of"),
        ({"max_vcpus": "lots"}, "max_vcpus must be an integer"),
        ({"retry_attempts": 11}, "retry_attempts must be 1..10"),
        ({"runnable_timeout_minutes": 5}, "runnable_timeout_minutes"),
        ({"weights_s3_mirror": "https://example.com/w"}, "weights_s3_mirror"),
        ({"schedules": [{"name": "a", "expression": "daily", "key": "schedules/a.json"}]}, "expression"),
        ({"schedules": [{"name": "a", "expression": "rate(1 day)", "key": "prompts/a.json"}]}, "key must be"),
        ({"schedules": [{"name": "a b", "expression": "rate(1 day)", "key": "schedules/a.json"}]}, "name"),
        (
            {"schedules": [{"name": "a", "expression": "rate(1 day)", "key": "schedules/a.json", "x": 1}]},
            "unknown",
        ),
    ],
)
def test_bad_context_is_a_clear_error(context: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config(**context)


def test_duplicate_schedule_names_are_rejected() -> None:
    schedule = {"name": "a", "expression": "rate(1 day)", "key": "schedules/a.json"}
    with pytest.raises(ConfigError, match="unique"):
        config(schedules=[schedule, schedule])


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        (
            "123456789012.dkr.ecr.us-west-2.amazonaws.com/wan:v1",
            ("arn:aws:ecr:us-west-2:123456789012:repository/wan", "v1"),
        ),
        (
            "123456789012.dkr.ecr.us-west-2.amazonaws.com/team/wan@sha256:abc",
            ("arn:aws:ecr:us-west-2:123456789012:repository/team/wan", "sha256:abc"),
        ),
        (
            "123456789012.dkr.ecr.us-west-2.amazonaws.com/wan",
            ("arn:aws:ecr:us-west-2:123456789012:repository/wan", "latest"),
        ),
        ("ghcr.io/acme/wan:v1", None),
        ("public.ecr.aws/acme/wan:v1", None),
    ],
)
def test_pull_mode_recognises_ecr_uris(uri: str, expected: tuple[str, str] | None) -> None:
    assert _ecr_reference(uri) == expected


def test_asset_allow_list_drops_dot_folders_and_caches() -> None:
    excludes = allow_only(("lambdas",))
    assert excludes[:2] == ["*", ".*"] and "!lambdas/**" in excludes and "**/__pycache__" in excludes


def test_worker_command_is_the_contract_command() -> None:
    assert WORKER_COMMAND == ["python", "-m", "worker"]
    assert len(retry_strategies()) == 3
