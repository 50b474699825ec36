"""Progress as one JSON object per line on stdout (CloudWatch Logs parses them) and `<item>.progress.json`."""

from __future__ import annotations

import json
import sys
import time
from datetime import UTC, datetime
from typing import Any

from wanbatch import layout


def utcnow() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def emit(event: str, **fields: Any) -> None:
    """One JSON log line: `{"ts": ..., "event": ..., ...}`."""
    sys.stdout.write(json.dumps({"ts": utcnow(), "event": event, **fields}, default=str) + "\n")
    sys.stdout.flush()


class ItemProgress:
    """Per-step log lines for one item, and its S3 progress record every `every` steps."""

    def __init__(self, storage, run_id: str, item_id: str, total_steps: int, attempt: int, every: int = 5):
        self.storage, self.run_id, self.item_id = storage, run_id, item_id
        self.total, self.attempt, self.every = total_steps, attempt, max(1, every)
        self._seconds: list[float] = []

    def step(self, index: int, expert: str, seconds: float) -> None:
        self._seconds.append(seconds)
        recent = self._seconds[-5:]  # recent steps predict the next ones better than the first (warm-up)
        s_per_step = sum(recent) / len(recent)
        done = index + 1
        fields = {
            "run_id": self.run_id,
            "item": self.item_id,
            "step": done,
            "total_steps": self.total,
            "expert": expert,
            "s_per_step": round(s_per_step, 4),
            "eta_s": round(s_per_step * (self.total - done), 1),
            "attempt": self.attempt,
        }
        emit("step", **fields)
        if done % self.every == 0 or done == self.total:
            self.write(state="denoising", **fields)

    def write(self, state: str, **fields: Any) -> None:
        record = {"run_id": self.run_id, "item": self.item_id, "state": state, "attempt": self.attempt,
                  "total_steps": self.total, "updated_at": utcnow(), **fields}  # fmt: skip
        self.storage.write(
            layout.progress_key(self.run_id, self.item_id), json.dumps(record).encode(), "application/json"
        )


class Stopwatch:
    def __init__(self) -> None:
        self.started = time.perf_counter()

    def __call__(self) -> float:
        return time.perf_counter() - self.started
