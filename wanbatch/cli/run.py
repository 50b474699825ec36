"""`wanbatch run FILE|PROMPT`: render here, with the real model on a local GPU or `--tiny` on the CPU."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from wanbatch.cli._render import add_local_arguments, cache_dir, render_spec, report
from wanbatch.client.render import local_spec, tiny_model
from wanbatch.errors import CLIError
from wanbatch.prompts import PromptFile, parse_prompt_file
from wanbatch.spec import DEFAULT_MODEL_ID, DEFAULT_MODEL_REVISION, ModelRef

NAME = "run"
HELP = (
    "Render a prompt file or one prompt on this machine (what the original run.sh did): the real model "
    "on a local GPU, or --tiny, a random-weight model shaped like Wan2.2, on the CPU in seconds."
)
EXAMPLES = [
    'wanbatch run "A serene lake at sunset" --size 1280*720',
    "wanbatch run prompts/holiday.json --output /opt/wanbatch/outputs",
    'wanbatch run --tiny "A cat walks on the grass"',
]
# A prompt's settings as options: (option, prompt-file field, type, help).
SETTINGS = (
    ("--size", "size", str, "W*H: 1280*720 (default), 720*1280, 832*480 or 480*832"),
    ("--frames", "num_frames", int, "4k+1, 5-201 (default 81)"),
    ("--fps", "fps", int, "default 16"),
    ("--steps", "steps", int, "denoising steps (default 40)"),
    ("--seed", "seed", int, "0 to 2**32-1 (default: derived from the run and item id, and recorded)"),
    ("--negative-prompt", "negative_prompt", str, "default: Wan's own"),
    ("--guidance-scale", "guidance_scale", float, "high-noise expert (default 4.0)"),
    ("--guidance-scale-2", "guidance_scale_2", float, "low-noise expert (default 3.0)"),
    ("--flow-shift", "flow_shift", float, "default 12.0"),
)
# --tiny on a CPU: a small render unless the prompt's options say otherwise.
TINY_DEFAULTS = {"size": "832*480", "num_frames": 5, "steps": 6}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", metavar="FILE|PROMPT", help="a prompt file (.json/.jsonl), or one prompt")
    parser.add_argument(
        "--tiny",
        action="store_true",
        help="the tiny random-weight model on CPU (a PROMPT defaults to 832*480, 5 frames, 6 steps)",
    )
    parser.add_argument(
        "--model",
        help=f"hub repo id or local Diffusers folder (default {DEFAULT_MODEL_ID}, or the file's model)",
    )
    parser.add_argument("--revision", help="branch, tag or commit of --model (default main)")
    prompt = parser.add_argument_group("one PROMPT's settings (a FILE has its own)")
    prompt.add_argument("--id", help="the item id, naming the output files (default p0000)")
    for option, field, kind, text in SETTINGS:
        prompt.add_argument(option, dest=field, type=kind, metavar=kind.__name__.upper(), help=text)
    add_local_arguments(parser)


def run(args: argparse.Namespace) -> int:
    name, content, prompt_file = _prompt_file(args)
    model = _model(args, prompt_file)
    if model is not None:  # the command line's model wins over the file's
        prompt_file = prompt_file.model_copy(update={"model": None})
    spec = local_spec(
        prompt_file,
        name=name,
        content=content,
        model=model or ModelRef(id=DEFAULT_MODEL_ID, revision=DEFAULT_MODEL_REVISION),
    )
    result = render_spec(args, spec)
    return 0 if result is None else report(result, quiet=args.quiet)


def _prompt_file(args: argparse.Namespace) -> tuple[str, bytes, PromptFile]:
    """(name, bytes, parsed) of the FILE, or of a one-prompt file built from PROMPT and its options."""
    settings = {s[1]: getattr(args, s[1]) for s in SETTINGS if getattr(args, s[1]) is not None}
    path = Path(args.source)
    if path.is_file():
        if settings or args.id:
            given = ", ".join(s[0] for s in SETTINGS if s[1] in settings) or "--id"
            raise CLIError(f"{given} set(s) a PROMPT's values; {path} has its own (edit its `defaults`)")
        content = path.read_bytes()
        return path.name, content, parse_prompt_file(content, name=path.name)
    if path.suffix in (".json", ".jsonl"):
        raise CLIError(
            f"no such prompt file: {path} (to render the text itself, don't end it in {path.suffix})"
        )
    item = {**(TINY_DEFAULTS if args.tiny else {}), **settings, "prompt": args.source}
    if args.id:
        item["id"] = args.id
    content = json.dumps({"prompts": [item]}, ensure_ascii=False).encode()
    # The text's first words name the run: `<words>-<time>-<hash8>`.
    name = " ".join(args.source.split()[:8])[:40] + ".json"
    return name, content, parse_prompt_file(content, name="prompt.json")


def _model(args: argparse.Namespace, prompt_file: PromptFile) -> ModelRef | None:
    """The command line's model, or None to keep the file's (else the default)."""
    if args.tiny and (args.model or args.revision):
        raise CLIError("--tiny is a model of its own: drop --model/--revision, or drop --tiny")
    if args.tiny:
        return ModelRef(id=str(tiny_model(cache_dir(args))), revision="main")
    if args.model or args.revision:
        model_id = args.model or (prompt_file.model.id if prompt_file.model else DEFAULT_MODEL_ID)
        return ModelRef(id=model_id, revision=args.revision or DEFAULT_MODEL_REVISION)
    return None
