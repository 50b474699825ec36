"""`wanbatch fetch RUN_ID [DIR]`: download a run's videos and manifests (and error records)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from wanbatch.cli import _progress
from wanbatch.cli._aws import add_stack_arguments, deployment
from wanbatch.client.fetch import download, plan_fetch

NAME = "fetch"
HELP = (
    "Download a run's videos, manifests and error records into DIR (default ./<RUN_ID>); "
    "a re-run skips files already here."
)
EXAMPLES = [
    "wanbatch fetch holiday-20250101T120000Z-1a2b3c4d",
    "wanbatch fetch holiday-20250101T120000Z-1a2b3c4d ~/videos/holiday",
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_id", metavar="RUN_ID", help="the run id `wanbatch submit` printed")
    parser.add_argument("dir", metavar="DIR", nargs="?", type=Path, help="where to put the files")
    parser.add_argument("--force", action="store_true", help="download files already here again")
    parser.add_argument("-q", "--quiet", action="store_true", help="print nothing but the paths")
    add_stack_arguments(parser)


def run(args: argparse.Namespace) -> int:
    stack = deployment(args)
    s3 = stack.client("s3")
    destination = args.dir or Path(args.run_id)
    plan = plan_fetch(s3, stack.bucket, args.run_id, destination, force=args.force)
    with _progress.bar(total=plan.total_bytes, unit="B", unit_scale=True, desc=args.run_id) as progress:
        paths = download(s3, stack.bucket, args.run_id, destination, plan, on_bytes=progress.update)
    for path in paths:
        print(path)
    if not args.quiet:
        videos = sum(p.suffix == ".mp4" for p in paths)
        print(
            f"{len(paths)} file(s) downloaded ({videos} video(s)), {len(plan.up_to_date)} already here, "
            f"in {destination}",
            file=sys.stderr,
        )
        if not paths and not plan.up_to_date:
            print("nothing to fetch yet: `wanbatch status` shows the run's progress", file=sys.stderr)
    return 0
