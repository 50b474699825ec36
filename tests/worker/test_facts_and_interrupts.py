"""Instance facts from a fake IMDSv2, the Spot price, and the Spot notice / SIGTERM interrupting a render."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from worker import facts
from worker.interrupts import Interrupts

from wanbatch.errors import InterruptedRender


class FakeImds:
    """IMDSv2: PUT a token first; GETs without it get 401."""

    def __init__(self, notice: dict | None = None):
        self.paths = {
            "/latest/meta-data/instance-type": "g6e.4xlarge",
            "/latest/meta-data/instance-life-cycle": "spot",
            "/latest/meta-data/placement/availability-zone": "us-east-1b",
        }
        self.notice = notice
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_PUT(self):
                self._send(200, "token-1" if self.path == "/latest/api/token" else "")

            def do_GET(self):
                if self.headers.get("X-aws-ec2-metadata-token") != "token-1":
                    return self._send(401, "")
                if self.path == "/latest/meta-data/spot/instance-action" and fake.notice:
                    return self._send(200, json.dumps(fake.notice))
                body = fake.paths.get(self.path)
                self._send(200 if body else 404, body or "")

            def _send(self, status, body):
                self.send_response(status)
                self.end_headers()
                self.wfile.write(body.encode())

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}"


@pytest.fixture
def imds():
    fake = FakeImds()
    yield fake
    fake.server.shutdown()


def test_instance_facts_come_from_imdsv2(imds):
    assert facts.Imds(imds.url).instance() == facts.Instance("g6e.4xlarge", "spot", "us-east-1b")
    assert facts.Imds(imds.url).spot_notice() is None


def test_no_metadata_service_means_unknown_quickly(monkeypatch):
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    started = time.monotonic()
    assert facts.Imds().instance() == facts.Instance()
    assert time.monotonic() - started < 0.5


def test_spot_price_comes_from_the_price_history_and_on_demand_from_the_table():
    class FakeEc2:
        def describe_spot_price_history(self, **kwargs):
            assert kwargs["InstanceTypes"] == ["g6e.4xlarge"] and kwargs["AvailabilityZone"] == "us-east-1b"
            return {"SpotPriceHistory": [{"SpotPrice": "1.2345", "Timestamp": datetime.now(UTC)}]}

    spot = facts.Instance("g6e.4xlarge", "spot", "us-east-1b")
    assert facts.price_per_hour(spot, client=FakeEc2()) == (1.2345, "spot-price-history")
    on_demand = facts.Instance("g6e.xlarge", "on-demand", "us-east-1a")
    assert facts.price_per_hour(on_demand) == (facts.ON_DEMAND_USD_PER_HOUR["g6e.xlarge"], "on-demand-table")
    assert facts.price_per_hour(facts.Instance()) == (None, None)


def test_a_denied_spot_price_lookup_leaves_the_price_unknown():
    from botocore.exceptions import ClientError

    class DeniedEc2:
        def describe_spot_price_history(self, **kwargs):
            raise ClientError(
                {"Error": {"Code": "UnauthorizedOperation", "Message": "no"}}, "DescribeSpotPriceHistory"
            )

    spot = facts.Instance("g6e.4xlarge", "spot", "us-east-1b")
    assert facts.price_per_hour(spot, client=DeniedEc2()) == (None, None)


def busy_loop(seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.01)


def test_the_spot_notice_interrupts_the_main_thread(imds):
    imds.notice = {"action": "terminate", "time": "2030-01-01T00:00:00Z"}
    interrupts = Interrupts(facts.Imds(imds.url), poll_s=0.05)
    interrupts.install(poll_spot=True)
    try:
        with pytest.raises(InterruptedRender) as stopped:
            busy_loop(10)
    finally:
        interrupts.uninstall()
    assert stopped.value.reason == "spot-notice"


def test_sigterm_inside_a_held_write_waits_for_the_write_to_finish():
    interrupts = Interrupts()
    interrupts.install(poll_spot=False)
    finished = False
    try:
        with pytest.raises(InterruptedRender) as stopped:
            with interrupts.held():
                os.kill(os.getpid(), signal.SIGTERM)
                busy_loop(0.1)
                finished = True
    finally:
        interrupts.uninstall()
    assert finished and stopped.value.reason == "sigterm"
