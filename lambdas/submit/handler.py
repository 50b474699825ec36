"""Submit Lambda: a prompt file in S3 (or a schedule firing) -> one Batch job for its run."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import boto3
from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit

from lambdas.submit.dedupe import idempotency_config, idempotent_submitter
from lambdas.submit.events import triggers_from_event
from lambdas.submit.settings import SubmitSettings
from lambdas.submit.submit import Outcome, process_trigger

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.typing import LambdaContext

logger = Logger()
tracer = Tracer()
metrics = Metrics()


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    settings = SubmitSettings.from_env()
    idempotency_config().register_lambda_context(context)
    s3, batch = boto3.client("s3"), boto3.client("batch")
    submit = idempotent_submitter(settings.idempotency_table, boto3.client("dynamodb"))
    outcomes = [
        process_trigger(trigger, settings=settings, s3=s3, batch=batch, submit=submit)
        for trigger in triggers_from_event(event, default_bucket=os.environ.get("BUCKET"))
    ]
    for outcome in outcomes:
        record_metrics(outcome)
    return {"outcomes": [outcome.to_dict() for outcome in outcomes]}


def record_metrics(outcome: Outcome) -> None:
    if outcome.status == "submitted":
        metrics.add_metric(name="FilesAccepted", unit=MetricUnit.Count, value=1)
        metrics.add_metric(name="PromptsSubmitted", unit=MetricUnit.Count, value=outcome.prompts)
    elif outcome.status == "rejected":
        metrics.add_metric(name="FilesRejected", unit=MetricUnit.Count, value=1)
    elif outcome.status == "duplicate":
        metrics.add_metric(name="DuplicateDeliveries", unit=MetricUnit.Count, value=1)
