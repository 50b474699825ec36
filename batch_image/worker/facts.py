"""Facts about where the job runs, for the manifest: versions, GPU, instance, Spot price, queue wait.

Every probe is best-effort with short timeouts: off EC2 (a laptop, CI) the answers are None, quickly.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import subprocess
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

log = logging.getLogger(__name__)

IMDS_DEFAULT = "http://169.254.169.254"
IMDS_TIMEOUT_S = 1.0
# us-east-1 On-Demand $/h, used only when the instance is On-Demand (Spot prices come from the API).
ON_DEMAND_USD_PER_HOUR = {
    "g6e.xlarge": 1.861,
    "g6e.2xlarge": 2.242,
    "g6e.4xlarge": 3.004,
    "g6e.8xlarge": 4.529,
    "g6e.12xlarge": 10.493,
    "g6e.16xlarge": 7.577,
    "g6e.24xlarge": 15.066,
    "g6e.48xlarge": 30.131,
}


@dataclass(frozen=True)
class Instance:
    instance_type: str | None = None
    lifecycle: str | None = None  # spot | on-demand
    availability_zone: str | None = None


def versions() -> dict:
    import diffusers
    import torch
    import transformers

    import wanbatch

    image_tag, image_digest = _image()
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "project": wanbatch.__version__,
        "image_tag": image_tag,
        "image_digest": image_digest,
    }


def _image() -> tuple[str | None, str | None]:
    """Image name and digest from the ECS task metadata endpoint, else what the build baked in."""
    endpoint = os.environ.get("ECS_CONTAINER_METADATA_URI_V4")
    if endpoint:
        try:
            with urllib.request.urlopen(endpoint, timeout=IMDS_TIMEOUT_S) as resp:
                meta = json.load(resp)
            return meta.get("Image"), meta.get("ImageID")
        except (OSError, ValueError) as exc:
            log.warning("ECS metadata unavailable: %s", exc)
    return os.environ.get("WANBATCH_IMAGE_TAG"), os.environ.get("WANBATCH_IMAGE_DIGEST")


def gpu() -> dict:
    import torch

    if not torch.cuda.is_available():
        return {"gpu_name": None, "gpu_memory_bytes": None, "gpu_driver": None}
    props = torch.cuda.get_device_properties(0)
    return {"gpu_name": props.name, "gpu_memory_bytes": int(props.total_memory), "gpu_driver": _driver()}


def _driver() -> str | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        return out.stdout.strip().splitlines()[0] or None
    except (OSError, subprocess.SubprocessError, IndexError):
        return None


def host_ram_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


class Imds:
    """IMDSv2 client: a session token, then GETs; None wherever the service does not answer."""

    def __init__(self, endpoint: str | None = None):
        self.endpoint = (
            endpoint or os.environ.get("AWS_EC2_METADATA_SERVICE_ENDPOINT") or IMDS_DEFAULT
        ).rstrip("/")
        self.disabled = os.environ.get("AWS_EC2_METADATA_DISABLED", "").lower() == "true"
        self._token: str | None = None
        self._instance: Instance | None = None

    def _request(self, path: str, method: str = "GET", headers: dict | None = None) -> str | None:
        req = urllib.request.Request(f"{self.endpoint}{path}", method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=IMDS_TIMEOUT_S) as resp:
                return resp.read().decode()
        except urllib.error.HTTPError as exc:
            if exc.code == 401:
                self._token = None  # expired: the next call fetches a new one
            return None
        except OSError:
            return None

    def get(self, path: str) -> str | None:
        if self.disabled:
            return None
        if self._token is None:
            self._token = self._request(
                "/latest/api/token", "PUT", {"X-aws-ec2-metadata-token-ttl-seconds": "21600"}
            )
            if self._token is None:
                return None
        return self._request(path, headers={"X-aws-ec2-metadata-token": self._token})

    def instance(self) -> Instance:
        if self._instance is None:  # asked once: the answers do not change while the job runs
            self._instance = self._ask_instance()
        return self._instance

    def _ask_instance(self) -> Instance:
        itype = self.get("/latest/meta-data/instance-type")
        if itype is None:
            return Instance()
        life = self.get("/latest/meta-data/instance-life-cycle")  # "spot" or "on-demand"
        zone = self.get("/latest/meta-data/placement/availability-zone")
        return Instance(itype, life if life in ("spot", "on-demand") else None, zone)

    def spot_notice(self) -> dict | None:
        """The Spot interruption notice (`{"action": "terminate", "time": ...}`) once it exists."""
        body = self.get("/latest/meta-data/spot/instance-action")
        try:
            return json.loads(body) if body else None
        except ValueError:
            return {"action": "unknown", "raw": body}


def price_per_hour(instance: Instance, client=None) -> tuple[float | None, str | None]:
    """$/hour: the current Spot price for the type and AZ (when allowed), or the On-Demand table."""
    if instance.instance_type is None:
        return None, None
    if instance.lifecycle == "spot" and instance.availability_zone:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            import boto3

            ec2 = client or boto3.client("ec2", region_name=instance.availability_zone[:-1])
            history = ec2.describe_spot_price_history(
                InstanceTypes=[instance.instance_type],
                AvailabilityZone=instance.availability_zone,
                ProductDescriptions=["Linux/UNIX"],
                StartTime=datetime.now(UTC) - timedelta(hours=1),
                MaxResults=1,
            )["SpotPriceHistory"]
            if history:
                return float(history[0]["SpotPrice"]), "spot-price-history"
        except (BotoCoreError, ClientError) as exc:
            log.warning("no Spot price (%s); cost stays unknown", exc)
        return None, None
    price = ON_DEMAND_USD_PER_HOUR.get(instance.instance_type)
    return (price, "on-demand-table") if price is not None else (None, None)


def queue_wait_s(client=None) -> float | None:
    """Seconds this Batch job waited between submission and start (batch:DescribeJobs, when allowed)."""
    job_id = os.environ.get("AWS_BATCH_JOB_ID")
    if not job_id:
        return None
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        import boto3

        jobs = (client or boto3.client("batch")).describe_jobs(jobs=[job_id])["jobs"]
        if jobs and jobs[0].get("startedAt") and jobs[0].get("createdAt"):
            return (jobs[0]["startedAt"] - jobs[0]["createdAt"]) / 1000.0  # both in epoch ms
    except (BotoCoreError, ClientError) as exc:
        log.warning("no queue wait (%s)", exc)
    return None
