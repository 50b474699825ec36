"""Stop early, cleanly: SIGTERM/SIGINT and the EC2 Spot interruption notice.

While armed, a stop raises InterruptedRender in the main thread at once (a 720p step lasts longer than
Batch's grace period); inside `held()` (writes to storage) it waits until the write is done. The state of
the last completed step is already saved (or saved by the job on the way out), so the retry resumes it.
"""

from __future__ import annotations

import _thread
import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from wanbatch.errors import InterruptedRender
from worker.progress import emit

log = logging.getLogger(__name__)


class Interrupts:
    def __init__(self, imds=None, poll_s: float = 5.0):
        self.imds, self.poll_s = imds, poll_s
        self.reason: str | None = None
        self._held = 0
        self._stop_polling = threading.Event()
        self._previous: dict[int, object] = {}

    def install(self, *, poll_spot: bool) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._on_signal)
        if poll_spot and self.imds is not None:
            threading.Thread(target=self._poll, name="spot-notice", daemon=True).start()

    def uninstall(self) -> None:
        self._stop_polling.set()
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _on_signal(self, signum: int, _frame) -> None:
        self.reason = self.reason or signal.Signals(signum).name.lower()
        emit("stop_requested", reason=self.reason)
        if not self._held:
            raise InterruptedRender(self.reason)

    def _poll(self) -> None:
        while not self._stop_polling.wait(self.poll_s):
            notice = self.imds.spot_notice()
            if notice:
                self.reason = "spot-notice"
                emit("spot_notice", notice=notice)
                _thread.interrupt_main(signal.SIGTERM)  # runs _on_signal in the main thread
                return

    @contextmanager
    def held(self) -> Iterator[None]:
        """Finish the enclosed write before stopping."""
        self._held += 1
        try:
            yield
        finally:
            self._held -= 1
        self.check()

    def check(self) -> None:
        if self.reason and not self._held:
            raise InterruptedRender(self.reason)
