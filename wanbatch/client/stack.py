"""The deployed stack's resources, found from its CloudFormation outputs (stacks/wan_stack.py names them)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from wanbatch.errors import DeploymentError

DEFAULT_STACK = "WanBatch"  # cdk.json context `stack_name`
STACK_ENV = "WANBATCH_STACK"
REQUIRED_OUTPUTS = (
    "BucketName",
    "JobQueueArn",
    "JobDefinitionArn",
    "CacheFillJobQueueArn",
    "CacheFillJobDefinitionArn",
)


@dataclass(frozen=True)
class Deployment:
    stack_name: str
    region: str | None
    bucket: str
    job_queue: str
    job_definition: str
    cache_fill_job_queue: str
    cache_fill_job_definition: str
    topic_arn: str | None = None
    log_group: str | None = None
    session: Any = None  # boto3.Session

    def client(self, service: str) -> Any:
        return self.session.client(service)


def default_stack_name() -> str:
    return os.environ.get(STACK_ENV) or DEFAULT_STACK


def find_deployment(stack_name: str, *, region: str | None = None, profile: str | None = None) -> Deployment:
    """Describe the stack and read its outputs; DeploymentError says what is missing and what to do."""
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        session = boto3.Session(region_name=region, profile_name=profile)
        stacks = session.client("cloudformation").describe_stacks(StackName=stack_name)["Stacks"]
    except ClientError as exc:
        message = exc.response.get("Error", {}).get("Message", str(exc))
        if "does not exist" in message:
            raise DeploymentError(
                f"stack {stack_name!r} not found in {session.region_name or 'the default region'}: deploy it "
                f"with `cdk deploy`, or pass --stack NAME / --region (or set {STACK_ENV})"
            ) from exc
        raise DeploymentError(f"cannot describe stack {stack_name!r}: {message}") from exc
    except BotoCoreError as exc:  # no credentials, no region, endpoint unreachable, unknown profile
        raise DeploymentError(f"cannot reach CloudFormation for stack {stack_name!r}: {exc}") from exc
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stacks[0].get("Outputs", [])}
    missing = [name for name in REQUIRED_OUTPUTS if not outputs.get(name)]
    if missing:
        raise DeploymentError(
            f"stack {stack_name!r} has no output(s) {', '.join(missing)}: is it a wanbatch stack, and is its "
            f"deployment finished (status {stacks[0].get('StackStatus')})?"
        )
    return Deployment(
        stack_name=stack_name,
        region=session.region_name,
        bucket=outputs["BucketName"],
        job_queue=outputs["JobQueueArn"],
        job_definition=outputs["JobDefinitionArn"],
        cache_fill_job_queue=outputs["CacheFillJobQueueArn"],
        cache_fill_job_definition=outputs["CacheFillJobDefinitionArn"],
        topic_arn=outputs.get("TopicArn"),
        log_group=outputs.get("JobLogGroup"),
        session=session,
    )
