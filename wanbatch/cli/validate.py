"""`wanbatch validate FILE`: check a prompt file exactly as the submit Lambda will."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from wanbatch.errors import PromptFileError
from wanbatch.prompts import parse_prompt_file

NAME = "validate"
HELP = "Check a prompt file (.json or .jsonl); exit 0 when valid, 1 listing every error otherwise."
EXAMPLES = [
    "wanbatch validate prompts/holiday.json",
    "cat prompts.jsonl | wanbatch validate --format jsonl -",
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE", help="the prompt file, or - for standard input")
    parser.add_argument(
        "--format",
        choices=("auto", "json", "jsonl"),
        default="auto",
        help="auto (default): .jsonl files are one prompt per line, anything else one JSON document",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="print nothing when the file is valid")


def run(args: argparse.Namespace) -> int:
    data = sys.stdin.buffer.read() if args.file == "-" else Path(args.file).read_bytes()
    name = {"auto": args.file, "json": "file.json", "jsonl": "file.jsonl"}[args.format]
    try:
        prompt_file = parse_prompt_file(data, name=name)
    except PromptFileError as err:
        print_errors(args.file, err)
        return 1
    if not args.quiet:
        print(f"{args.file}: valid, {len(prompt_file.prompts)} prompt(s), gpus {prompt_file.gpus}")
    return 0


def print_errors(source: str | Path, err: PromptFileError) -> None:
    """On stderr, the same lines as the `messages` of the submit Lambda's rejection record."""
    print(f"{source}: {len(err.errors)} error(s)", file=sys.stderr)
    for error in err.errors:
        print(error.describe(), file=sys.stderr)
