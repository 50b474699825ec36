"""Writing JSON records to S3 without clobbering one someone else wrote first."""

from __future__ import annotations

import json
from typing import Any


def put_json_if_absent(s3: Any, bucket: str, key: str, record: dict[str, Any]) -> bool:
    """Write `record` unless `key` exists (S3 conditional write); False when a record is already there."""
    from botocore.exceptions import ClientError  # botocore only when called: the package stays AWS-free

    try:
        s3.put_object(
            Bucket=bucket,
            Key=key,
            Body=json.dumps(record, indent=1).encode(),
            ContentType="application/json",
            IfNoneMatch="*",
        )
    except ClientError as exc:
        if exc.response["Error"]["Code"] in ("PreconditionFailed", "ConditionalRequestConflict"):
            return False
        raise
    return True
