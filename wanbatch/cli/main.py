"""The `wanbatch` console script: one module per command, and one table from errors to exit codes.

A command module has NAME, HELP, EXAMPLES, `add_arguments(parser)` and `run(args) -> int`; registering one
is adding it to COMMANDS. Results go to stdout; errors and hints to stderr. Known errors print one message
and exit non-zero without a traceback (WANBATCH_DEBUG=1 shows it); unknown errors keep their traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version

from botocore.exceptions import BotoCoreError, ClientError

from wanbatch.cli import cancel, fetch, reproduce, run, status, submit, validate, warm
from wanbatch.errors import (
    CLIError,
    DeploymentError,
    PromptFileError,
    RejectedError,
    RenderFailed,
    RunNotFoundError,
    SpecError,
    WaitTimeout,
)

COMMANDS = (validate, submit, status, fetch, cancel, warm, run, reproduce)

# Known errors -> exit code; the first matching entry wins, so subclasses come before their bases.
# A PromptFileError prints every problem, one per line. docs/cli.md lists the codes.
EXIT_CODES: dict[type[BaseException], int] = {
    PromptFileError: 1,
    RejectedError: 1,
    RenderFailed: 1,
    SpecError: 1,
    CLIError: 2,
    WaitTimeout: 5,  # a TimeoutError, hence an OSError: before OSError
    OSError: 2,
    DeploymentError: 3,
    ClientError: 3,
    BotoCoreError: 3,
    RunNotFoundError: 4,
}


def _version() -> str:
    try:
        return version("wanbatch")
    except PackageNotFoundError:  # running from a checkout that was never installed
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wanbatch", description="Batch text-to-video with Wan2.2 on AWS Batch."
    )
    parser.add_argument("--version", action="version", version=f"wanbatch {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        sub = commands.add_parser(
            command.NAME,
            help=command.HELP,
            description=command.HELP,
            epilog="examples:\n" + "\n".join(f"  {line}" for line in command.EXAMPLES),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        command.add_arguments(sub)
        sub.set_defaults(run=command.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except tuple(EXIT_CODES) as exc:
        if os.environ.get("WANBATCH_DEBUG") == "1":
            raise
        print(f"error: {describe(exc)}", file=sys.stderr)
        return next(code for kind, code in EXIT_CODES.items() if isinstance(exc, kind))


def describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.filename:
        return f"cannot read {exc.filename}: {exc.strerror or exc}"
    return str(exc)


if __name__ == "__main__":
    sys.exit(main())
