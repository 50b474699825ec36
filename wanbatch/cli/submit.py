"""`wanbatch submit FILE`: upload a prompt file to the deployed stack and print the run id it starts."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from wanbatch.cli import _progress
from wanbatch.cli._aws import add_stack_arguments, add_timeout_argument, deployment
from wanbatch.cli.validate import print_errors
from wanbatch.client.stack import Deployment
from wanbatch.client.submission import prompt_key, upload_prompt_file, wait_for_run
from wanbatch.errors import CLIError, PromptFileError
from wanbatch.prompts import parse_prompt_file

NAME = "submit"
HELP = (
    "Upload a prompt file under prompts/ of the deployed stack's bucket, wait for its run, print the run id."
)
EXAMPLES = [
    "wanbatch submit prompts/holiday.json",
    "RUN=$(wanbatch submit --quiet ideas.jsonl) && wanbatch status $RUN",
    "wanbatch submit --prefix team-a --no-wait big.jsonl",
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE", help="a prompt file (.json or .jsonl)")
    parser.add_argument("--prefix", default="", help="a folder under prompts/ to upload into")
    parser.add_argument(
        "--no-wait", action="store_true", help="print the S3 key after the upload, don't wait"
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="print the run id only")
    add_timeout_argument(parser, default=120.0, what="the submit Lambda's run.json")
    add_stack_arguments(parser)


def run(args: argparse.Namespace) -> int:
    path = Path(args.file)
    if path.suffix not in (".json", ".jsonl"):
        raise CLIError(f"{path}: the submit Lambda only takes .json and .jsonl files")
    body = path.read_bytes()
    # 1. The same validation as the Lambda: a file it would reject never leaves this machine.
    try:
        prompt_file = parse_prompt_file(body, name=path.name)
    except PromptFileError as err:
        print_errors(path, err)  # as `wanbatch validate` prints them
        return 1
    # 2. Upload, then wait for the Lambda's answer (run.json, or a rejection record).
    return submit_bytes(args, deployment(args), name=path.name, body=body, prompts=len(prompt_file.prompts))


def submit_bytes(args: argparse.Namespace, stack: Deployment, *, name: str, body: bytes, prompts: int) -> int:
    """Upload and wait; shared with `reproduce --submit`."""
    s3 = stack.client("s3")
    upload = upload_prompt_file(s3, stack.bucket, prompt_key(name, prefix=args.prefix), body)
    say = (lambda text: None) if args.quiet else (lambda text: print(text, file=sys.stderr))
    say(f"uploaded s3://{upload.bucket}/{upload.key} ({prompts} prompt(s))")
    if args.no_wait:
        print(f"s3://{upload.bucket}/{upload.key}")
        return 0
    with _progress.bar(
        desc="waiting for the submit Lambda", unit="s", bar_format="{desc}: {elapsed}"
    ) as wait:
        record = wait_for_run(
            s3, upload, timeout_s=args.timeout, interval_s=args.interval, tick=lambda elapsed: wait.update(0)
        )
    say(
        f"run {record['run_id']}: Batch job {record.get('job_name')} ({record.get('job_id')}), "
        f"{record.get('item_count')} item(s)"
    )
    if record.get("duplicate"):
        say("note: this content was submitted before; the earlier run is reused")
    print(record["run_id"])
    return 0
