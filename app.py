#!/usr/bin/env python3
"""CDK entry point: cdk.json context -> AppConfig -> one stack, checked by cdk-nag's AWS Solutions pack."""

from __future__ import annotations

import os

import aws_cdk as cdk
from cdk_nag import AwsSolutionsChecks

from stacks.config import AppConfig
from stacks.wan_stack import WanBatchStack


def build_app(app: cdk.App) -> WanBatchStack:
    config = AppConfig.from_context(app.node.try_get_context, env=os.environ)
    stack = WanBatchStack(
        app,
        config.stack_name,
        config=config,
        env=cdk.Environment(account=config.account, region=config.region),
        description="Wan2.2 text-to-video batch rendering on AWS Batch GPU Spot (wanbatch)",
    )
    cdk.Validations.of(app).add_plugins(AwsSolutionsChecks(app, verbose=True))
    return stack


if __name__ == "__main__":
    cdk_app = cdk.App()
    build_app(cdk_app)
    cdk_app.synth()
