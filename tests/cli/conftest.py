"""The deployed stack in moto: a CloudFormation stack with the real output names, its bucket, Batch queues and
job definitions, and the real submit Lambda answering uploads under prompts/ as S3 notifications would."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import boto3
import pytest
from moto import mock_aws

from wanbatch import layout

STACK = "WanBatch"
BUCKET = "wanbatch-cli-bucket"
TABLE = "wanbatch-cli-idempotency"


@dataclass
class FakeStack:
    s3: Any
    batch: Any
    job_queue: str
    job_definition: str
    cache_queue: str
    cache_definition: str

    def put_json(self, key: str, body: Any) -> None:
        self.s3.put_object(Bucket=BUCKET, Key=key, Body=json.dumps(body).encode())

    def get_json(self, key: str) -> Any:
        return json.loads(self.s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())

    def keys(self, prefix: str = "") -> list[str]:
        listing = self.s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix)
        return sorted(obj["Key"] for obj in listing.get("Contents", []))


def _batch_resources(batch: Any, iam: Any) -> tuple[str, str, str, str]:
    role = iam.create_role(RoleName="batch", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    environment = batch.create_compute_environment(
        computeEnvironmentName="wan", type="UNMANAGED", state="ENABLED", serviceRole=role
    )["computeEnvironmentArn"]
    order = [{"order": 1, "computeEnvironment": environment}]
    arns = []
    for name, resources in (("render", [("GPU", "1"), ("VCPU", "8")]), ("cache-fill", [("VCPU", "4")])):
        arns.append(
            batch.create_job_queue(jobQueueName=f"wan-{name}", state="ENABLED", priority=1,
                                   computeEnvironmentOrder=order)["jobQueueArn"]
        )  # fmt: skip
        arns.append(
            batch.register_job_definition(
                jobDefinitionName=f"wan-{name}",
                type="container",
                containerProperties={
                    "image": "wanbatch:test",
                    "command": ["python", "-m", "worker"],
                    "resourceRequirements": [
                        {"type": kind, "value": value} for kind, value in [*resources, ("MEMORY", "8192")]
                    ],
                },
            )["jobDefinitionArn"]
        )
    return arns[0], arns[1], arns[2], arns[3]


@pytest.fixture
def stack(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeStack]:
    """The stack `cdk deploy` makes, as far as the CLI sees it: outputs, bucket, queues, job definitions."""
    monkeypatch.delenv("WANBATCH_STACK", raising=False)
    monkeypatch.setenv("WANBATCH_NO_PROGRESS", "1")
    with mock_aws(config={"batch": {"use_docker": False}}):
        batch = boto3.client("batch")
        queue, definition, cache_queue, cache_definition = _batch_resources(batch, boto3.client("iam"))
        template = {
            "Resources": {"Bucket": {"Type": "AWS::S3::Bucket", "Properties": {"BucketName": BUCKET}}},
            "Outputs": {
                "BucketName": {"Value": {"Ref": "Bucket"}},
                "JobQueueArn": {"Value": queue},
                "JobDefinitionArn": {"Value": definition},
                "CacheFillJobQueueArn": {"Value": cache_queue},
                "CacheFillJobDefinitionArn": {"Value": cache_definition},
                "TopicArn": {"Value": "arn:aws:sns:us-east-1:123456789012:wan-alerts"},
                "JobLogGroup": {"Value": "/wanbatch/jobs"},
            },
        }
        boto3.client("cloudformation").create_stack(StackName=STACK, TemplateBody=json.dumps(template))
        boto3.client("dynamodb").create_table(
            TableName=TABLE,
            BillingMode="PAY_PER_REQUEST",
            KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
        )
        # The submit Lambda's environment, as stacks/triggers.py sets it.
        for name, value in {
            "JOB_QUEUE": queue,
            "JOB_DEFINITION": definition,
            "IDEMPOTENCY_TABLE": TABLE,
            "MODEL_ID": "Wan-AI/Wan2.2-T2V-A14B-Diffusers",
            "MODEL_REVISION": "main",
            "ITEMS_PER_JOB": "1",
            "POWERTOOLS_SERVICE_NAME": "wanbatch-submit",
            "POWERTOOLS_METRICS_NAMESPACE": "WanBatchCliTest",
            "POWERTOOLS_METRICS_DISABLED": "true",
            "POWERTOOLS_TRACE_DISABLED": "true",
            "POWERTOOLS_LOG_LEVEL": "ERROR",
        }.items():
            monkeypatch.setenv(name, value)
        monkeypatch.delenv("GPU_JOB_DEFINITIONS", raising=False)
        from lambdas.submit import dedupe

        dedupe.reset()  # a persistence layer made inside this test's mock
        yield FakeStack(boto3.client("s3"), batch, queue, definition, cache_queue, cache_definition)
        dedupe.reset()


@dataclass
class SubmitLambda:
    """Calls the real submit handler once for each new object under prompts/ (the S3 notification)."""

    s3: Any
    context: Any
    outcomes: list[dict] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def watch(self) -> None:
        from lambdas.submit.handler import handler
        from wanbatch.local.events import s3_put_event

        seen: set[tuple[str, str, Any]] = set()
        while not self.stop.is_set():
            listing = self.s3.list_objects_v2(Bucket=BUCKET, Prefix=layout.PROMPTS_PREFIX)
            for obj in listing.get("Contents", []):
                upload = (obj["Key"], obj["ETag"].strip('"'), obj["LastModified"])
                if upload in seen:
                    continue
                seen.add(upload)
                event = s3_put_event(bucket=BUCKET, key=upload[0], etag=upload[1], size=obj["Size"])
                try:
                    self.outcomes += handler(event, self.context)["outcomes"]
                except Exception as exc:  # surfaced by the fixture, not lost in the thread
                    self.errors.append(exc)
            time.sleep(0.02)

    def outcomes_after(self, count: int, timeout: float = 10.0) -> list[dict]:
        """The first `count` outcomes: the handler writes run.json (what the CLI waits for) before it
        returns, so the CLI can finish before this thread has recorded the outcome."""
        deadline = time.monotonic() + timeout
        while len(self.outcomes) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return list(self.outcomes)


@pytest.fixture
def submit_lambda(stack: FakeStack, lambda_context) -> Iterator[SubmitLambda]:
    fake = SubmitLambda(stack.s3, lambda_context)
    thread = threading.Thread(target=fake.watch, daemon=True)
    thread.start()
    yield fake
    fake.stop.set()
    thread.join(timeout=5)
    assert not fake.errors, fake.errors


def manifest_stub(run_id: str, item_id: str) -> dict:
    """Enough of a manifest for status and fetch (they only look for the file)."""
    return {"schema_version": 1, "run_id": run_id, "item_id": item_id}
