"""cdk-nag (v3) acknowledgments: each names one finding and says why it is acceptable here.

cdk-nag v3 reads CDK's native `Validations.of(scope).acknowledge(...)`; an acknowledgment on a
construct covers the resources under it. Granular rules (IAM4, IAM5) are acknowledged finding by
finding, e.g. `AwsSolutions-IAM5[Resource::*]`, never for a whole rule.
"""

from __future__ import annotations

from aws_cdk import Acknowledgment, Stack, Validations
from aws_cdk import aws_s3 as s3
from constructs import IConstruct

PACK = "AwsSolutions"
LAMBDA_BASIC_EXECUTION = (
    "Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole"
)


def acknowledge(scope: IConstruct, findings: dict[str, str]) -> None:
    """`{finding (e.g. "AwsSolutions-S1", "AwsSolutions-IAM5[Resource::*]"): reason}` on `scope` and below."""
    acknowledgments = [
        Acknowledgment(id=f"{PACK}::{finding}", reason=why) for finding, why in findings.items()
    ]
    Validations.of(scope).acknowledge(*acknowledgments)


def bucket_prefix_finding(bucket: s3.IBucket, prefix: str) -> str:
    """The IAM5 finding for objects under `prefix` of a bucket defined in this stack."""
    logical_id = Stack.of(bucket).get_logical_id(bucket.node.default_child)
    return f"AwsSolutions-IAM5[Resource::<{logical_id}.Arn>/{prefix}*]"


def acknowledge_prefixes(scope: IConstruct, bucket: s3.IBucket, prefixes: dict[str, str]) -> None:
    """`{prefix: reason}`: object access scoped to a key prefix of the project's bucket."""
    acknowledge(scope, {bucket_prefix_finding(bucket, p): why for p, why in prefixes.items()})


def suppress_stack_findings(stack: Stack) -> None:
    """Findings shared by resources CDK generates (the S3 notification handler) and our Lambdas."""
    acknowledge(
        stack,
        {
            f"AwsSolutions-IAM4[{LAMBDA_BASIC_EXECUTION}]": "AWSLambdaBasicExecutionRole grants only "
            "CloudWatch Logs writes, which every Lambda here needs.",
        },
    )
