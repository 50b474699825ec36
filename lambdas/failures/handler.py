"""Failure recorder: Batch "Job State Change" FAILED events for `wan-*` jobs -> missing error records."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import boto3
from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit

from lambdas.failures.records import failed_job_from_event, record_missing_errors

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.typing import LambdaContext

logger = Logger()
tracer = Tracer()
metrics = Metrics()


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    job = failed_job_from_event(event)
    if job is None:
        logger.info("not a failed wan-* job; nothing to record")
        return {"written": []}
    logger.set_correlation_id(job.run_id)
    written = record_missing_errors(boto3.client("s3"), job, default_bucket=os.environ.get("BUCKET"))
    logger.info("recorded errors for a failed job", extra={"job_id": job.job_id, "records": len(written)})
    metrics.add_metric(name="ErrorRecordsWritten", unit=MetricUnit.Count, value=len(written))
    return {"written": written}
