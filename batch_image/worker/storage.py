"""Where a run's files live: S3 (the deployment) or a local folder (local runs, the demo, tests).

Both speak contract-2 keys (`runs/<run_id>/<item>.mp4`, `resume/<run_id>/<item>/...`), so the job code is
the same for both. A local spec at `<dir>/spec.json` keeps its outputs in `<dir>/` and resume state in
`<dir>/resume/<item>/`.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Protocol

from wanbatch import layout
from wanbatch.errors import SpecError, TransientError

# S3 error codes that mean "try again later": the job exits 75 and Batch retries it.
TRANSIENT_CODES = frozenset(
    {"SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded", "ServiceUnavailable",
     "InternalError", "RequestTimeout", "RequestTimeTooSkewed", "503", "500"}
)  # fmt: skip


class Storage(Protocol):
    def read(self, key: str) -> bytes:
        """The object's bytes; FileNotFoundError when absent."""

    def exists(self, key: str) -> bool: ...

    def write(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        """Replace the object atomically: readers see the old or the new bytes, never a mix."""

    def upload(self, key: str, path: Path, content_type: str) -> None: ...

    def delete(self, key: str) -> None:
        """Remove the object; absent is fine."""

    def uri(self, key: str) -> str: ...


class S3Storage:
    def __init__(self, bucket: str, client=None):
        import boto3
        from botocore.config import Config

        self.bucket = bucket
        # Standard retries absorb short throttling; what survives them becomes TransientError (exit 75).
        self._s3 = client or boto3.client(
            "s3", config=Config(retries={"mode": "standard", "max_attempts": 5})
        )

    def read(self, key: str) -> bytes:
        with _s3_errors(key):
            try:
                return self._s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()
            except self._s3.exceptions.NoSuchKey as exc:
                raise FileNotFoundError(self.uri(key)) from exc

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        with _s3_errors(key):
            try:
                self._s3.head_object(Bucket=self.bucket, Key=key)
                return True
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                    return False
                raise

    def write(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        with _s3_errors(key):
            self._s3.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType=content_type)

    def upload(self, key: str, path: Path, content_type: str) -> None:
        # One PUT (videos are tens of MB): its errors are plain ClientErrors, unlike the transfer manager's.
        with _s3_errors(key), open(path, "rb") as body:
            self._s3.put_object(Bucket=self.bucket, Key=key, Body=body, ContentType=content_type)

    def delete(self, key: str) -> None:
        with _s3_errors(key):
            self._s3.delete_object(Bucket=self.bucket, Key=key)

    def uri(self, key: str) -> str:
        return layout.s3_uri(self.bucket, key)


class LocalStorage:
    """Contract-2 keys of one run mapped into the run's folder."""

    def __init__(self, run_dir: Path, run_id: str):
        self.run_dir = Path(run_dir)
        self.run_id = run_id

    def path(self, key: str) -> Path:
        for prefix, sub in (
            (layout.run_prefix(self.run_id), ""),
            (f"{layout.RESUME_PREFIX}{self.run_id}/", "resume/"),
        ):
            if key.startswith(prefix):
                return self.run_dir / sub / key[len(prefix) :]
        raise ValueError(f"key {key!r} is outside run {self.run_id}")

    def read(self, key: str) -> bytes:
        return self.path(key).read_bytes()

    def exists(self, key: str) -> bool:
        return self.path(key).exists()

    def write(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())  # a SIGKILL right after must still find the whole file
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def upload(self, key: str, path: Path, content_type: str) -> None:
        self.write(key, Path(path).read_bytes(), content_type)

    def delete(self, key: str) -> None:
        path = self.path(key)
        path.unlink(missing_ok=True)
        # Drop folders left empty (a finished item's resume/<item>/), never the run folder itself.
        for parent in path.parents:
            if parent == self.run_dir or self.run_dir not in parent.parents:
                break
            try:
                parent.rmdir()
            except OSError:
                break

    def uri(self, key: str) -> str:
        return str(self.path(key))


def read_spec(spec_uri: str) -> bytes:
    """The spec's bytes; a missing spec is bad input (SpecError, exit 64)."""
    if spec_uri.startswith("s3://"):
        bucket, key = layout.parse_s3_uri(spec_uri)
        try:
            return S3Storage(bucket).read(key)
        except FileNotFoundError as exc:
            raise SpecError(f"spec not found: {spec_uri}") from exc
    path = Path(spec_uri)
    if not path.is_file():
        raise SpecError(f"spec not found: {spec_uri} (SPEC_URI must be s3://bucket/key or a local file)")
    return path.read_bytes()


def run_storage(spec_uri: str, run_id: str) -> Storage:
    """Where the run's outputs go: the spec's bucket, or the local spec's folder."""
    if spec_uri.startswith("s3://"):
        return S3Storage(layout.parse_s3_uri(spec_uri)[0])
    return LocalStorage(Path(spec_uri).parent, run_id)


class _s3_errors:
    """Turn throttling and connection failures into TransientError (exit 75); leave the rest alone."""

    def __init__(self, key: str):
        self.key = key

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        from botocore.exceptions import ClientError, ConnectionError, HTTPClientError

        if exc is None:
            return False
        if isinstance(exc, ClientError):
            code = str(exc.response.get("Error", {}).get("Code", ""))
            status = str(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
            if code in TRANSIENT_CODES or status in ("500", "503"):
                raise TransientError(
                    f"S3 is throttling or unavailable ({code or status}) for {self.key}"
                ) from exc
        elif isinstance(exc, ConnectionError | HTTPClientError):
            raise TransientError(f"cannot reach S3 for {self.key}: {exc}") from exc
        return False
