"""`wanbatch warm`: start the cache-fill job so the model is in EFS before the first GPU job needs it."""

from __future__ import annotations

import argparse
import re
import sys

from wanbatch.cli._aws import add_stack_arguments, deployment
from wanbatch.errors import CLIError
from wanbatch.spec import DEFAULT_MODEL_ID, DEFAULT_MODEL_REVISION

NAME = "warm"
HELP = (
    "Submit the cache-fill job (a CPU instance) that downloads the model into the EFS checkpoint cache "
    "and converts it to bf16; print its Batch job id."
)
EXAMPLES = [
    "wanbatch warm",
    "wanbatch warm --revision 5be7df9619b54f4e2667b2755bc6a756675b5cd7",
    "wanbatch warm --model Wan-AI/Wan2.2-TI2V-5B-Diffusers",
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=DEFAULT_MODEL_ID, help=f"hub repo id (default {DEFAULT_MODEL_ID})")
    parser.add_argument(
        "--revision", default=DEFAULT_MODEL_REVISION, help="branch, tag or commit (default: main)"
    )
    add_stack_arguments(parser)


def run(args: argparse.Namespace) -> int:
    for name, value in (("--model", args.model), ("--revision", args.revision)):
        if not value or re.search(r"[\s@]", value):
            raise CLIError(f"{name} must be non-empty, without spaces or '@', got {value!r}")
    stack = deployment(args)
    model_ref = f"{args.model}@{args.revision}"
    job = stack.client("batch").submit_job(
        jobName=job_name(args.model),
        jobQueue=stack.cache_fill_job_queue,
        jobDefinition=stack.cache_fill_job_definition,
        containerOverrides={"environment": [{"name": "WARM_MODEL", "value": model_ref}]},
    )
    print(f"cache-fill job {job['jobName']} for {model_ref} submitted", file=sys.stderr)
    print(job["jobId"])
    return 0


def job_name(model_id: str) -> str:
    """`wan-warm-<model>`, in Batch's job-name alphabet (`[A-Za-z0-9_-]`, at most 128)."""
    return ("wan-warm-" + re.sub(r"[^A-Za-z0-9_-]+", "-", model_id).strip("-"))[:128]
