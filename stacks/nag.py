"""cdk-nag (v3) acknowledgments: each names one finding and says why it is acceptable here.

cdk-nag v3 reads CDK's native `Validations.of(scope).acknowledge(...)`; an acknowledgment on a
construct covers the resources under it. IAM wildcard findings are acknowledged one by one, as
`AwsSolutions-IAM5[Resource::...]`.
"""

from __future__ import annotations

from aws_cdk import Acknowledgment, Validations
from constructs import IConstruct


def acknowledge(scope: IConstruct, findings: dict[str, str]) -> None:
    """`{rule id (with [finding] where the rule has several): reason}` on `scope` and below."""
    Validations.of(scope).acknowledge(
        *(Acknowledgment(id=rule, reason=why) for rule, why in findings.items())
    )


def suppress_stack_findings(stack: IConstruct) -> None:
    """Findings on resources CDK generates for us (no construct of ours to hang them on)."""
