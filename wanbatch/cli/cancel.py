"""`wanbatch cancel RUN_ID`: terminate the run's Batch job and record its unfinished items as cancelled."""

from __future__ import annotations

import argparse
import getpass

from wanbatch.cli._aws import add_stack_arguments, deployment
from wanbatch.client.runs import cancel_run

NAME = "cancel"
HELP = (
    "Terminate a run's Batch job (with its array children) and write a Cancelled error record for each "
    "item that has neither a video nor an error record."
)
EXAMPLES = ["wanbatch cancel holiday-20250101T120000Z-1a2b3c4d"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_id", metavar="RUN_ID", help="the run id `wanbatch submit` printed")
    parser.add_argument("--reason", help="recorded in the job and the error records")
    add_stack_arguments(parser)


def run(args: argparse.Namespace) -> int:
    stack = deployment(args)
    reason = args.reason or f"cancelled by {_user()} with `wanbatch cancel`"
    result = cancel_run(stack.client("s3"), stack.client("batch"), stack.bucket, args.run_id, reason=reason)
    print(f"terminated Batch job {result.job_id}")
    print(
        f"{len(result.cancelled)} item(s) cancelled, {len(result.done)} already done, "
        f"{len(result.failed)} already failed"
    )
    return 0


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (some containers)
        return "a user"
