"""Fixtures shared by every test folder: fake AWS credentials and a Lambda context."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from wanbatch.local.flow import LocalLambdaContext

EVENTS_DIR = Path(__file__).parent / "events"


@pytest.fixture(autouse=True)
def aws_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test may reach a real account: fake credentials and a fixed region, always."""
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SECURITY_TOKEN": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", os.environ.get("HF_HUB_OFFLINE", "0"))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")


@pytest.fixture
def lambda_context() -> LocalLambdaContext:
    return LocalLambdaContext(function_name="test")


def load_event(name: str) -> dict:
    """A real-shaped event sample from tests/events/."""
    return json.loads((EVENTS_DIR / name).read_text())

# jsii (the CDK's Python bridge) prints a banner on Node 20 for every synth; Node 20 is what we support.
os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")
os.environ.setdefault("JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION", "1")
