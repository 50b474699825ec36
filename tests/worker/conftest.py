"""Worker fixtures: the tiny Wan2.2-shaped model (built once per test process), spec items, moto S3."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from wanbatch.spec import SpecItem

RUN_ID = "tests-20250101T000000Z-0123abcd"
BUCKET = "wan-test-bucket"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from worker.tiny_model import ensure_tiny_model

    return ensure_tiny_model(tmp_path_factory.mktemp("models") / "tiny-wan")


@pytest.fixture(scope="session")
def tiny_pipeline(tiny_model_dir: Path):
    """The tiny model loaded through the worker's own loader (CPU, bf16 experts, fp32 VAE)."""
    from worker.offload import choose_plan
    from worker.pipeline import load_pipeline

    plan = choose_plan(gpu_total_bytes=None, host_ram_bytes=0, width=832, height=480, frames=5)
    return load_pipeline(tiny_model_dir, plan=plan, device="cpu")


def make_plan(offload: str, text_encoder_device: str = "cpu"):
    """An offload plan as choose_plan returns it, for tests that pick the mode themselves."""
    from worker.offload import OffloadPlan

    return OffloadPlan(offload, text_encoder_device, False, "test")


def make_item(**overrides) -> SpecItem:
    fields = dict(
        id="p0000",
        prompt="A cat walks on the grass",
        negative_prompt="blurry",
        seed=7,
        width=832,
        height=480,
        num_frames=5,
        fps=16,
        steps=6,
        guidance_scale=4.0,
        guidance_scale_2=3.0,
        flow_shift=12.0,
    )
    fields.update(overrides)
    return SpecItem(**fields)


def make_spec(model_dir: Path, items: list[SpecItem], *, items_per_job: int | None = None) -> dict:
    return {
        "spec_version": 1,
        "run_id": RUN_ID,
        "source": {"bucket": BUCKET, "key": "prompts/tests.json", "etag": "abc"},
        "model": {"id": str(model_dir), "revision": "main"},
        "gpus": 1,
        "items_per_job": items_per_job or len(items),
        "items": [item.model_dump() for item in items],
    }


@pytest.fixture
def worker_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """Environment for an in-process `python -m worker` run: no IMDS, a private model cache."""
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("MODEL_CACHE_DIR", str(tmp_path / "model-cache"))
    for name in (
        "AWS_BATCH_JOB_ARRAY_INDEX",
        "AWS_BATCH_JOB_ATTEMPT",
        "AWS_BATCH_JOB_ID",
        "WARM_MODEL",
        "OFFLOAD",
        "WANBATCH_TEST_STEP_DELAY",
        "RESUME_SAVE_INTERVAL_S",
    ):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.fixture
def s3() -> Iterator:
    """A moto S3 bucket; the worker's own clients are created inside the mock."""
    import boto3
    from moto import mock_aws

    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        yield client


def put_spec(s3, spec: dict) -> str:
    key = f"runs/{spec['run_id']}/spec.json"
    s3.put_object(Bucket=BUCKET, Key=key, Body=json.dumps(spec).encode())
    return f"s3://{BUCKET}/{key}"


def read_json(s3, key: str) -> dict:
    return json.loads(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())


def keys(s3) -> set[str]:
    return {o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])}
