"""How many jobs the queue's compute environments can run at once, for `items_per_job=auto`.

slots = sum of the environments' maxvCpus // the job definition's vCPUs. vCPUs over-count when an instance
has more vCPUs per GPU than a job asks for; that errs towards more children (less packing), never towards
idle GPUs.
"""

from __future__ import annotations

import logging

from botocore.exceptions import BotoCoreError, ClientError

FALLBACK_SLOTS = 16  # when Batch cannot be asked (e.g. a missing permission): plenty, so packing stays modest

logger = logging.getLogger(__name__)


def parallel_slots(batch, *, job_queue: str, job_definition: str) -> int:  # noqa: ANN001 (boto3 client)
    try:
        queues = batch.describe_job_queues(jobQueues=[job_queue])["jobQueues"]
        environments = [entry["computeEnvironment"] for q in queues for entry in q["computeEnvironmentOrder"]]
        if not environments:  # an empty list would describe every environment in the account
            raise KeyError(f"job queue {job_queue} not found or has no compute environment")
        described = batch.describe_compute_environments(computeEnvironments=environments)
        max_vcpus = sum(
            env.get("computeResources", {}).get("maxvCpus", 0) for env in described["computeEnvironments"]
        )
        job_vcpus = _job_vcpus(batch, job_definition)
    except (ClientError, BotoCoreError, KeyError) as exc:
        logger.warning("cannot size the fleet (%s); assuming %d parallel jobs", exc, FALLBACK_SLOTS)
        return FALLBACK_SLOTS
    return max(1, int(max_vcpus // job_vcpus))


def _job_vcpus(batch, job_definition: str) -> float:  # noqa: ANN001
    definitions = batch.describe_job_definitions(jobDefinitions=[job_definition])["jobDefinitions"]
    active = [d for d in definitions if d.get("status", "ACTIVE") == "ACTIVE"]
    if not active:
        raise KeyError(f"no active job definition {job_definition}")
    container = max(active, key=lambda d: d.get("revision", 0)).get("containerProperties", {})
    for requirement in container.get("resourceRequirements", []):
        if requirement.get("type") == "VCPU":
            return max(float(requirement["value"]), 0.25)
    return max(float(container.get("vcpus") or 1), 0.25)
