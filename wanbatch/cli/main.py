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

from wanbatch.cli import validate
from wanbatch.errors import CLIError, PromptFileError

COMMANDS = (validate,)

# Known errors -> exit code. A PromptFileError prints every problem, one per line.
EXIT_CODES: dict[type[BaseException], int] = {
    PromptFileError: 1,
    CLIError: 2,
    OSError: 2,
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
