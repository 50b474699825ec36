"""moto S3 + Batch (no Docker) + DynamoDB with the stack's resources, and the submit Lambda's environment."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote_plus

import boto3
import pytest
from moto import mock_aws

from tests.conftest import load_event

BUCKET = "wan-bucket"
QUEUE = "wan-queue"
JOB_DEFINITION = "wan-job"
TABLE = "wan-idempotency"
MAX_VCPUS = 64  # with 8 vCPUs per job: 8 jobs at once


@dataclass
class FakeAws:
    s3: Any
    batch: Any
    dynamodb: Any
    queue_arn: str
    job_definition_arn: str

    def put(self, key: str, body: bytes | str) -> str:
        """Upload a prompt file; returns its ETag without quotes, as S3 events carry it."""
        data = body.encode() if isinstance(body, str) else body
        return self.s3.put_object(Bucket=BUCKET, Key=key, Body=data)["ETag"].strip('"')

    def get_json(self, key: str) -> Any:
        return json.loads(self.s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())

    def keys(self, prefix: str = "") -> list[str]:
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
        return sorted(obj["Key"] for page in pages for obj in page.get("Contents", []))

    def jobs(self) -> list[dict]:
        """Every job in the queue except array children (as real ListJobs shows a queue)."""
        summaries = []
        for status in ("SUBMITTED", "PENDING", "RUNNABLE", "STARTING", "RUNNING", "SUCCEEDED", "FAILED"):
            summaries += self.batch.list_jobs(jobQueue=QUEUE, jobStatus=status)["jobSummaryList"]
        return [job for job in summaries if ":" not in job["jobId"]]


def _create_batch(batch: Any, iam: Any, ec2: Any) -> tuple[str, str]:
    role = iam.create_role(RoleName="batch-service", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    profile = iam.create_instance_profile(InstanceProfileName="batch-instance")["InstanceProfile"]["Arn"]
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.0.0/24")["Subnet"]["SubnetId"]
    group = ec2.create_security_group(GroupName="batch", Description="batch", VpcId=vpc)["GroupId"]
    environment = batch.create_compute_environment(
        computeEnvironmentName="wan-gpu-spot",
        type="MANAGED",
        state="ENABLED",
        serviceRole=role,
        computeResources={
            "type": "EC2",
            "minvCpus": 0,
            "maxvCpus": MAX_VCPUS,
            "instanceTypes": ["optimal"],
            "subnets": [subnet],
            "securityGroupIds": [group],
            "instanceRole": profile,
        },
    )["computeEnvironmentArn"]
    queue = batch.create_job_queue(
        jobQueueName=QUEUE,
        state="ENABLED",
        priority=1,
        computeEnvironmentOrder=[{"order": 1, "computeEnvironment": environment}],
    )["jobQueueArn"]
    definition = batch.register_job_definition(
        jobDefinitionName=JOB_DEFINITION,
        type="container",
        containerProperties={
            "image": "wanbatch:test",
            "command": ["python", "-m", "worker"],
            "resourceRequirements": [
                {"type": "VCPU", "value": "8"},
                {"type": "MEMORY", "value": "60000"},
                {"type": "GPU", "value": "1"},
            ],
        },
    )["jobDefinitionArn"]
    return queue, definition


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeAws]:
    with mock_aws(config={"batch": {"use_docker": False}}):
        s3, batch = boto3.client("s3"), boto3.client("batch")
        dynamodb = boto3.client("dynamodb")
        s3.create_bucket(Bucket=BUCKET)
        dynamodb.create_table(
            TableName=TABLE,
            BillingMode="PAY_PER_REQUEST",
            KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
        )
        queue, definition = _create_batch(batch, boto3.client("iam"), boto3.client("ec2"))
        yield FakeAws(s3, batch, dynamodb, queue, definition)


@pytest.fixture(autouse=True)
def submit_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name, value in {
        "JOB_QUEUE": QUEUE,
        "JOB_DEFINITION": JOB_DEFINITION,
        "IDEMPOTENCY_TABLE": TABLE,
        "MODEL_ID": "Wan-AI/Wan2.2-T2V-A14B-Diffusers",
        "MODEL_REVISION": "deadbeef",
        "BUCKET": BUCKET,
        "POWERTOOLS_SERVICE_NAME": "wanbatch-test",
        "POWERTOOLS_METRICS_NAMESPACE": "WanBatchTest",
    }.items():
        monkeypatch.setenv(name, value)
    for name in (
        "POWERTOOLS_IDEMPOTENCY_DISABLED",
        "ITEMS_PER_JOB",
        "MAX_JOB_MINUTES",
        "GPU_JOB_DEFINITIONS",
    ):
        monkeypatch.delenv(name, raising=False)
    from lambdas.submit import dedupe

    dedupe.reset()  # a fresh persistence layer per test, created inside that test's mock
    yield
    dedupe.reset()


@pytest.fixture(autouse=True)
def clear_metrics() -> Iterator[None]:
    from aws_lambda_powertools import Metrics

    yield
    Metrics().clear_metrics()


def s3_event(key: str, etag: str, *, sequencer: str = "0055AED6DCD90281E5", time: str | None = None) -> dict:
    """The AWS sample S3 notification for `key` (URL-encoded here, as S3 does)."""
    event = copy.deepcopy(load_event("s3_put.json"))
    record = event["Records"][0]
    record["s3"]["bucket"]["name"] = BUCKET
    record["s3"]["bucket"]["arn"] = f"arn:aws:s3:::{BUCKET}"
    record["s3"]["object"].update(key=quote_plus(key, safe="/"), eTag=etag, sequencer=sequencer)
    if time:
        record["eventTime"] = time
    return event


def eventbridge_event(key: str, etag: str) -> dict:
    event = copy.deepcopy(load_event("s3_eventbridge_object_created.json"))
    event["detail"]["bucket"]["name"] = BUCKET
    event["detail"]["object"].update(key=key, etag=etag)
    event["detail"]["object"].pop("version-id")
    return event
