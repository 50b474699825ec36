"""Powertools idempotency around `submit_run`, keyed by run_id; nothing is built at import."""

from __future__ import annotations

import functools
from typing import Any

from aws_lambda_powertools.utilities.idempotency import (
    DynamoDBPersistenceLayer,
    IdempotencyConfig,
    idempotent_function,
)
from aws_lambda_powertools.utilities.idempotency.persistence.datarecord import DataRecord

from lambdas.submit.submit import Submitter, submit_run

# Records outlive S3's redelivery window; run.json and the job-name check cover anything later.
RECORD_TTL_SECONDS = 7 * 24 * 3600
KEY_PREFIX = "wanbatch-submit"  # stable across function renames, so a redeploy keeps its records


def _mark_duplicate(response: dict[str, Any], _record: DataRecord) -> dict[str, Any]:
    return {**response, "duplicate": True}


@functools.cache
def idempotency_config() -> IdempotencyConfig:
    return IdempotencyConfig(
        event_key_jmespath="run_id",
        raise_on_no_idempotency_key=True,
        expires_after_seconds=RECORD_TTL_SECONDS,
        response_hook=_mark_duplicate,
    )


def idempotent_submitter(table_name: str, dynamodb: Any) -> Submitter:
    """`submit_run`, run at most once per run_id: a concurrent second call raises
    IdempotencyAlreadyInProgressError (the Lambda fails, and its async retry finds the stored result).

    Built per invocation around the caller's client, so it follows the endpoint that client was made for.
    """
    return idempotent_function(
        data_keyword_argument="request",
        config=idempotency_config(),
        persistence_store=DynamoDBPersistenceLayer(table_name=table_name, boto3_client=dynamodb),
        key_prefix=KEY_PREFIX,
    )(submit_run)


def reset() -> None:
    """Forget the cached config (tests)."""
    idempotency_config.cache_clear()
