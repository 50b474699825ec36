"""The options every command that talks to the deployed stack shares, and the stack lookup behind them."""

from __future__ import annotations

import argparse

from wanbatch.client.stack import STACK_ENV, Deployment, default_stack_name, find_deployment


def add_stack_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("deployment")
    group.add_argument(
        "--stack",
        default=default_stack_name(),
        help=f"the deployed CloudFormation stack (default: ${STACK_ENV} or WanBatch)",
    )
    group.add_argument("--region", help="its AWS region (default: the AWS CLI's configuration)")
    group.add_argument("--profile", help="the AWS named profile to use")


def deployment(args: argparse.Namespace) -> Deployment:
    return find_deployment(args.stack, region=args.region, profile=args.profile)


def add_timeout_argument(parser: argparse.ArgumentParser, *, default: float, what: str) -> None:
    parser.add_argument(
        "--timeout",
        type=_seconds,
        default=default,
        metavar="SECONDS",
        help=f"how long to wait for {what} (default {default:g})",
    )
    parser.add_argument(
        "--interval", type=_seconds, default=2.0, metavar="SECONDS", help="how often to look (default 2)"
    )


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 <= value < 86_400:
        raise argparse.ArgumentTypeError(f"must be between 0 and 86400 seconds, got {text}")
    return value
