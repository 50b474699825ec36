"""Progress bars on stderr: tqdm when it is installed, stderr is a terminal and WANBATCH_NO_PROGRESS is unset.

Otherwise a bar that does nothing, so commands call the same methods either way (logs and pipes stay clean).
"""

from __future__ import annotations

import os
import sys
from typing import Any


class _NoBar:
    def __init__(self, **_: Any) -> None:
        self.n = 0

    def update(self, n: float = 1) -> None:
        self.n += n

    def set_postfix_str(self, text: str, refresh: bool = True) -> None:
        pass

    def set_description_str(self, text: str, refresh: bool = True) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> _NoBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def enabled() -> bool:
    if os.environ.get("WANBATCH_NO_PROGRESS", "").strip() not in ("", "0"):
        return False
    return sys.stderr.isatty()


def bar(**kwargs: Any) -> Any:
    """A tqdm bar (total=, desc=, unit=, ...) writing to stderr, or a silent stand-in."""
    if not enabled():
        return _NoBar(**kwargs)
    try:
        from tqdm.auto import tqdm
    except ImportError:  # the CLI's base install has no tqdm; the worker extra brings it
        return _NoBar(**kwargs)
    return tqdm(file=sys.stderr, dynamic_ncols=True, leave=False, **kwargs)
