"""Rendering on this machine, shared by `run` and `reproduce`: options, the worker run, its progress bar."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any

from wanbatch.cli import _progress
from wanbatch.cli.status import format_seconds
from wanbatch.client.render import (
    RenderResult,
    cache_root,
    render,
    worker_command,
    worker_environment,
    write_spec,
)
from wanbatch.spec import RunSpec
from wanbatch.worker_options import (
    ATTENTION_BACKENDS,
    OFFLOAD_MODES,
    QUANTIZATION_MODES,
    STEP_CACHES,
    TEXT_ENCODER_DEVICES,
)


def add_local_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("rendering on this machine")
    group.add_argument(
        "-o",
        "--output",
        type=Path,
        default=Path("outputs"),
        help="runs go to OUTPUT/<run_id>/ (default ./outputs)",
    )
    group.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="model cache: DIR/models (hub downloads), DIR/tiny-wan "
        "(default $WANBATCH_CACHE or ~/.cache/wanbatch)",
    )
    group.add_argument(
        "--offload",
        choices=OFFLOAD_MODES,
        default="auto",
        help="how much of the model leaves the GPU between uses (default auto: by GPU memory)",
    )
    group.add_argument(
        "--text-encoder-device",
        choices=TEXT_ENCODER_DEVICES,
        default="auto",
        help="where UMT5 runs (default auto)",
    )
    group.add_argument(
        "--quantization",
        choices=QUANTIZATION_MODES,
        default="none",
        help="fp8: FP8 linear layers, faster on L40S/H100, not lossless (default none)",
    )
    group.add_argument(
        "--step-cache",
        choices=STEP_CACHES,
        default="none",
        help="taylorseer: skip the network on 22 of 40 steps, faster, not lossless (default none)",
    )
    group.add_argument(
        "--attention",
        choices=ATTENTION_BACKENDS,
        default="auto",
        help="attention kernel (default auto: FlashAttention-4 on H100/H200 if installed, else torch SDPA)",
    )
    group.add_argument(
        "--dry-run", action="store_true", help="write the spec and print the worker command, render nothing"
    )
    group.add_argument("-q", "--quiet", action="store_true", help="print the video paths only")


def cache_dir(args: argparse.Namespace) -> Path:
    return (args.cache_dir or cache_root()).expanduser()


def render_spec(args: argparse.Namespace, spec: RunSpec) -> RenderResult | None:
    """Write the spec, run the worker on it with a progress bar; None for --dry-run."""
    spec_path = write_spec(spec, args.output)
    env = worker_environment(
        spec_path,
        model_cache_dir=cache_dir(args) / "models",
        offload=args.offload,
        text_encoder_device=args.text_encoder_device,
        quantization=args.quantization,
        step_cache=args.step_cache,
        attention=args.attention,
    )
    if args.dry_run:
        shown = ("SPEC_URI", "MODEL_CACHE_DIR", "OFFLOAD", "TEXT_ENCODER_DEVICE",
                 "QUANTIZATION", "STEP_CACHE", "ATTENTION_BACKEND")  # fmt: skip
        print(spec_path)
        print(
            " ".join(
                [*(f"{name}={shlex.quote(env[name])}" for name in shown), *map(shlex.quote, worker_command())]
            ),
            file=sys.stderr,
        )
        return None
    say = (lambda text: None) if args.quiet else (lambda text: print(text, file=sys.stderr))
    say(f"run {spec.run_id}: {len(spec.items)} item(s) with {spec.model.id}@{spec.model.revision}")
    with _Bars(say) as bars:
        result = render(spec_path, env, bars.on_event)
    return result


def report(result: RenderResult, *, quiet: bool) -> int:
    """Video paths on stdout; what failed on stderr; exit 0 only when every item has its video."""
    for path in result.videos:
        print(path)
    if not result.errors and result.exit_code == 0:
        if not quiet:
            print(f"{len(result.videos)} video(s) and manifest(s) in {result.run_dir}", file=sys.stderr)
        return 0
    for path in result.errors:
        print(f"error: {path.name}: {_error_line(path)}", file=sys.stderr)
    print(f"error: the worker exited {result.exit_code}; last lines of {result.log}:", file=sys.stderr)
    print(result.log_tail(), file=sys.stderr)
    return 1


def _error_line(path: Path) -> str:
    import json

    try:
        record = json.loads(path.read_text())
        return f"{record.get('type')}: {record.get('message')}"
    except ValueError:
        return "unreadable error record"


class _Bars:
    """One bar per item from the worker's `step` events; plain lines when bars are off."""

    def __init__(self, say: Any) -> None:
        self.say = say
        self.bars: dict[str, Any] = {}

    def __enter__(self) -> _Bars:
        return self

    def __exit__(self, *exc: object) -> None:
        for bar in self.bars.values():
            bar.close()

    def on_event(self, event: dict[str, Any]) -> None:
        kind, item = event.get("event"), event.get("item")
        if kind == "model_ready":
            self.say(f"model ready ({event.get('source')}, commit {event.get('commit') or '-'})")
        elif kind == "model_loaded":
            self.say(f"model loaded (offload {event.get('offload')}: {event.get('reason')})")
        elif kind == "step" and item:
            bar = self.bars.get(item)
            if bar is None:
                bar = self.bars[item] = _progress.bar(total=event.get("total_steps"), desc=item, unit="step")
            bar.update(event.get("step", 0) - bar.n)
            bar.set_postfix_str(f"{event.get('expert')}, ETA {format_seconds(event.get('eta_s') or 0)}")
        elif kind in ("item_done", "item_failed", "item_interrupted", "skipped") and item:
            if item in self.bars:
                self.bars.pop(item).close()
            if kind == "item_done":
                self.say(f"{item}: done in {event.get('seconds') or 0:.1f} s")
            elif kind == "skipped":
                self.say(f"{item}: skipped ({event.get('reason')})")
            else:
                self.say(
                    f"{item}: {kind.removeprefix('item_')}: {event.get('message') or event.get('reason')}"
                )
