"""A local stand-in for the deployed stack: moto's threaded server with the stack's resources in it."""

from __future__ import annotations

import json
import logging
import socket
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import boto3

REGION = "us-east-1"
LOCAL_KEY = "local"  # moto accepts any credentials; fixed ones keep a real profile out of the demo


def local_session() -> boto3.Session:
    return boto3.Session(aws_access_key_id=LOCAL_KEY, aws_secret_access_key=LOCAL_KEY, region_name=REGION)


@dataclass(frozen=True)
class LocalStack:
    """What the deployed stack's outputs would tell: endpoint and resource names."""

    endpoint_url: str
    bucket: str
    job_queue: str
    job_definition: str
    idempotency_table: str

    def client(self, service: str):  # noqa: ANN201 (boto3 clients have no common base type)
        return local_session().client(service, endpoint_url=self.endpoint_url)

    def environment(self) -> dict[str, str]:
        """Environment for boto3 in child processes (the worker) so they talk to this stand-in."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_REGION": REGION,
            "AWS_ACCESS_KEY_ID": LOCAL_KEY,
            "AWS_SECRET_ACCESS_KEY": LOCAL_KEY,
            # No instance metadata outside EC2: don't wait for it.
            "AWS_EC2_METADATA_DISABLED": "true",
        }


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def moto_server() -> Iterator[str]:
    """moto's threaded server on a free loopback port, with Batch told not to use Docker."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one access-log line per request otherwise
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    try:
        request = urllib.request.Request(
            f"{endpoint}/moto-api/config",
            data=json.dumps({"batch": {"use_docker": False}}).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        urllib.request.urlopen(request, timeout=10).close()
        yield endpoint
    finally:
        server.stop()


def create_stack(endpoint_url: str, *, bucket: str = "wanbatch-local") -> LocalStack:
    """Create what `cdk deploy` would: the bucket, a Batch queue and job definition, the idempotency table."""
    session = local_session()
    s3 = session.client("s3", endpoint_url=endpoint_url)
    s3.create_bucket(Bucket=bucket)

    iam = session.client("iam", endpoint_url=endpoint_url)
    role_arn = iam.create_role(
        RoleName="wanbatch-local-batch",
        AssumeRolePolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": []}),
    )["Role"]["Arn"]

    batch = session.client("batch", endpoint_url=endpoint_url)
    environment_arn = batch.create_compute_environment(
        computeEnvironmentName="wanbatch-local", type="UNMANAGED", state="ENABLED", serviceRole=role_arn
    )["computeEnvironmentArn"]
    queue_arn = batch.create_job_queue(
        jobQueueName="wanbatch-local",
        state="ENABLED",
        priority=1,
        computeEnvironmentOrder=[{"order": 1, "computeEnvironment": environment_arn}],
    )["jobQueueArn"]
    # The same command and environment as the deployed job definition (stacks/compute.py).
    definition_arn = batch.register_job_definition(
        jobDefinitionName="wanbatch-local-render",
        type="container",
        containerProperties={
            "image": "wanbatch-worker:local",
            "command": ["python", "-m", "worker"],
            "resourceRequirements": [
                {"type": "VCPU", "value": "1"},
                {"type": "MEMORY", "value": "2048"},
            ],
            "environment": [
                {"name": "OFFLOAD", "value": "auto"},
                {"name": "TEXT_ENCODER_DEVICE", "value": "auto"},
                {"name": "QUANTIZATION", "value": "none"},
                {"name": "STEP_CACHE", "value": "none"},
            ],
        },
    )["jobDefinitionArn"]

    dynamodb = session.client("dynamodb", endpoint_url=endpoint_url)
    table = "wanbatch-local-idempotency"
    dynamodb.create_table(
        TableName=table,
        KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    return LocalStack(
        endpoint_url=endpoint_url,
        bucket=bucket,
        job_queue=queue_arn,
        job_definition=definition_arn,
        idempotency_table=table,
    )
