"""Real-shaped events, as S3 notifications and the console deliver them, for calling handlers locally."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from urllib.parse import quote_plus


def s3_put_event(*, bucket: str, key: str, etag: str, size: int, sequencer: str | None = None,
                 time: datetime | None = None, region: str = "us-east-1") -> dict:
    """An `s3:ObjectCreated:Put` notification (event version 2.1); the key is URL-encoded as S3 sends it."""
    time = time or datetime.now(UTC)
    return {
        "Records": [
            {
                "eventVersion": "2.1",
                "eventSource": "aws:s3",
                "awsRegion": region,
                "eventTime": time.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
                "eventName": "ObjectCreated:Put",
                "userIdentity": {"principalId": "AWS:AIDAEXAMPLE"},
                "requestParameters": {"sourceIPAddress": "127.0.0.1"},
                "responseElements": {"x-amz-request-id": uuid.uuid4().hex[:16].upper(),
                                     "x-amz-id-2": uuid.uuid4().hex},
                "s3": {
                    "s3SchemaVersion": "1.0",
                    "configurationId": "wanbatch-prompts",
                    "bucket": {"name": bucket, "ownerIdentity": {"principalId": "A3EXAMPLE"},
                               "arn": f"arn:aws:s3:::{bucket}"},
                    "object": {"key": quote_plus(key, safe="/"), "size": size, "eTag": etag.strip('"'),
                               "sequencer": sequencer or f"{int(time.timestamp() * 1e6):016X}"},
                },
            }
        ]
    }
