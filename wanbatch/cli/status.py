"""`wanbatch status RUN_ID`: each item done, failed, running (step and ETA) or pending."""

from __future__ import annotations

import argparse
import json

from wanbatch.cli._aws import add_stack_arguments, deployment
from wanbatch.client.runs import ItemStatus, RunStatus, run_status

NAME = "status"
HELP = "Show a run's items: done, failed, running (with step and ETA from its progress record) or pending."
EXAMPLES = [
    "wanbatch status holiday-20250101T120000Z-1a2b3c4d",
    "wanbatch status --json holiday-20250101T120000Z-1a2b3c4d | jq .counts",
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_id", metavar="RUN_ID", help="the run id `wanbatch submit` printed")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    add_stack_arguments(parser)


def run(args: argparse.Namespace) -> int:
    stack = deployment(args)
    status = run_status(stack.client("s3"), stack.client("batch"), stack.bucket, args.run_id)
    print(json.dumps(status.to_dict(), indent=2) if args.json else render(status))
    return 0


def render(status: RunStatus) -> str:
    counts = status.counts
    lines = [
        f"run {status.run_id}",
        f"job {status.job_name or '-'} ({status.job_id or 'not submitted'}): "
        f"{status.job_status or 'unknown'}",
        f"items {len(status.items)}: " + ", ".join(f"{n} {state}" for state, n in counts.items()),
        "",
    ]
    rows = [("ITEM", "STATE", "STEP", "ETA", "DETAIL")] + [_row(item) for item in status.items]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines += [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)).rstrip() + "  " + row[4]
        for row in rows
    ]
    return "\n".join(line.rstrip() for line in lines)


def _row(item: ItemStatus) -> tuple[str, str, str, str, str]:
    step = f"{item.step}/{item.total_steps}" if item.step is not None and item.total_steps else ""
    eta = format_seconds(item.eta_s) if item.state == "running" and item.eta_s is not None else ""
    if item.state == "failed" and item.error:
        detail = f"{item.error.get('type')}: {item.error.get('message')}"
    elif item.state == "running":
        parts = [
            f"expert {item.expert}" if item.expert else "",
            f"attempt {item.attempt}" if item.attempt else "",
            f"{item.s_per_step:g} s/step" if item.s_per_step else "",
            item.progress_state if item.progress_state not in (None, "denoising") else "",
        ]
        detail = ", ".join(p for p in parts if p)
    else:
        detail = ""
    return item.id, item.state, step, eta, detail


def format_seconds(seconds: float) -> str:
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"
