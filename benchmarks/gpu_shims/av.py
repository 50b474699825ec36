"""A stand-in for the few PyAV calls `worker.video.probe` makes, decoding with imageio-ffmpeg's ffmpeg.

Only for the GPU benchmark machine, which lacks PyAV and whose 64 MiB transfer cannot also carry PyAV's
wheel; `benchmarks/run_e2e.sh` puts this folder on PYTHONPATH only when `import av` fails. The image and CI
use the real PyAV.
"""

from __future__ import annotations

from collections.abc import Iterator
from fractions import Fraction
from types import SimpleNamespace

import numpy as np


class _Frame:
    def __init__(self, array: np.ndarray):
        self._array = array

    def to_ndarray(self, format: str = "rgb24") -> np.ndarray:  # noqa: A002 - PyAV's name
        if format != "rgb24":
            raise ValueError(f"this stand-in decodes rgb24 only, not {format!r}")
        return self._array


class _Container:
    def __init__(self, path: str):
        import imageio_ffmpeg

        self._frames = imageio_ffmpeg.read_frames(path)
        meta = next(self._frames)
        self._width, self._height = meta["size"]
        codec = SimpleNamespace(
            width=self._width,
            height=self._height,
            name=str(meta.get("codec", "")).split(" ")[0],
            pix_fmt=str(meta.get("pix_fmt", "")).split("(")[0].strip(),
        )
        rate = Fraction(meta["fps"]).limit_denominator(1001)
        stream = SimpleNamespace(codec_context=codec, average_rate=rate)
        self.streams = SimpleNamespace(video=[stream])

    def decode(self, *streams, **_kw) -> Iterator[_Frame]:
        for raw in self._frames:
            yield _Frame(np.frombuffer(raw, np.uint8).reshape(self._height, self._width, 3))

    def __enter__(self) -> _Container:
        return self

    def __exit__(self, *exc) -> None:
        self._frames.close()


def open(path: str) -> _Container:  # noqa: A001 - PyAV's name
    return _Container(path)
