"""`wanbatch reproduce MANIFEST`: render a video again from its manifest alone, here or on the deployment."""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

from wanbatch.cli._aws import add_stack_arguments, add_timeout_argument, deployment
from wanbatch.cli._render import add_local_arguments, render_spec, report
from wanbatch.cli.submit import submit_bytes
from wanbatch.client.render import local_spec
from wanbatch.client.reproduce import (
    file_name,
    load_manifest,
    local_model_moved,
    pinned_revision,
    prompt_file_bytes,
    prompt_file_for,
)
from wanbatch.errors import CLIError
from wanbatch.manifest import Manifest
from wanbatch.prompts import parse_prompt_file
from wanbatch.spec import ModelRef

NAME = "reproduce"
HELP = (
    "Render a video again from its manifest: same prompt, seed, size, frames, steps, guidance, shift and "
    "model commit. Locally by default (then compared with the original's sha256), or --submit it to the "
    "deployment as a one-item prompt file."
)
EXAMPLES = [
    "wanbatch reproduce holiday-20250101T120000Z-1a2b3c4d/cat.manifest.json",
    "wanbatch reproduce --check outputs/demo/p0000.manifest.json",
    "wanbatch reproduce --submit s3://my-bucket/runs/holiday-20250101T120000Z-1a2b3c4d/cat.manifest.json",
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("manifest", metavar="MANIFEST", help="a manifest file, or its s3:// URI")
    parser.add_argument(
        "--model-dir",
        type=Path,
        help="a local Diffusers folder to use instead of the manifest's model (e.g. moved)",
    )
    parser.add_argument(
        "--check", action="store_true", help="exit 1 unless the new video is bit-identical to the original"
    )
    parser.add_argument(
        "--print-prompt-file", action="store_true", help="print the pinned one-item prompt file and stop"
    )
    remote = parser.add_argument_group("on the deployment")
    remote.add_argument(
        "--submit", action="store_true", help="upload it as a prompt file instead; print the run id"
    )
    remote.add_argument("--prefix", default="reproduce", help="folder under prompts/ (default reproduce)")
    remote.add_argument("--no-wait", action="store_true", help="don't wait for the run id")
    add_timeout_argument(remote, default=120.0, what="the submit Lambda's run.json")
    add_stack_arguments(parser)
    add_local_arguments(parser)


def run(args: argparse.Namespace) -> int:
    manifest = load_manifest(_read(args), name=args.manifest)
    if args.print_prompt_file:
        print(prompt_file_bytes(manifest).decode())
        return 0
    if args.submit:
        return _submit(args, manifest)
    return _local(args, manifest)


def _read(args: argparse.Namespace) -> bytes:
    if not args.manifest.startswith("s3://"):
        return Path(args.manifest).read_bytes()
    import boto3

    from wanbatch.layout import parse_s3_uri

    bucket, key = parse_s3_uri(args.manifest)
    s3 = boto3.Session(region_name=args.region, profile_name=args.profile).client("s3")
    return s3.get_object(Bucket=bucket, Key=key)["Body"].read()


def _submit(args: argparse.Namespace, manifest: Manifest) -> int:
    if args.model_dir or manifest.model.source == "local":
        raise CLIError(
            "the deployment renders hub models only; this video's model is a local folder "
            f"({args.model_dir or manifest.model.repo_id}): reproduce it locally"
        )
    if not manifest.model.commit:
        print(
            "warning: the manifest records no commit; submitting with revision "
            f"{manifest.model.revision!r}, which may have moved",
            file=sys.stderr,
        )
    body = prompt_file_bytes(manifest)
    parse_prompt_file(body, name=file_name(manifest))  # what the Lambda will check, checked here first
    return submit_bytes(args, deployment(args), name=file_name(manifest), body=body, prompts=1)


def _local(args: argparse.Namespace, manifest: Manifest) -> int:
    if args.model_dir is None and local_model_moved(manifest):
        raise CLIError(f"the manifest's model folder {manifest.model.repo_id} is gone: pass --model-dir")
    data = prompt_file_for(manifest)
    data.pop("model")  # given as the run's model below: a local folder path need not pass the file's id rules
    content = json.dumps(data, ensure_ascii=False).encode()
    model = ModelRef(id=str(args.model_dir or manifest.model.repo_id), revision=pinned_revision(manifest))
    spec = local_spec(
        parse_prompt_file(content, name="reproduce.json"),
        name=file_name(manifest),
        content=content,
        model=model,
    )
    # The fast presets change the frames, and so does the attention kernel's rounding: render with the
    # ones the original used (another kernel only when asked: `--attention`, e.g. on a GPU without FA4).
    args.quantization = manifest.runtime.quantization or "none"
    args.step_cache = manifest.runtime.step_cache or "none"
    if args.attention == "auto":
        args.attention = manifest.runtime.attention_backend
    result = render_spec(args, spec)
    if result is None:
        return 0
    code = report(result, quiet=args.quiet)
    if code != 0 or not result.videos:
        return code
    return _compare(manifest, result.videos[0], check=args.check, quiet=args.quiet)


def _compare(original: Manifest, video: Path, *, check: bool, quiet: bool) -> int:
    """Same sha256 as the original: bit-identical (the encoder is bit-exact, so same frames, same bytes)."""
    digest = hashlib.sha256(video.read_bytes()).hexdigest()
    if digest == original.output.sha256:
        if not quiet:
            print(f"identical: {video.name} has the original's sha256 {digest[:16]}…", file=sys.stderr)
        return 0
    print(
        f"{'error' if check else 'warning'}: {video.name} differs from the original "
        f"(sha256 {digest[:16]}… vs {original.output.sha256[:16]}…); a different GPU, driver, "
        "library version or weights can change the bits: compare the manifests' `versions`, "
        "`hardware` and `model.files`",
        file=sys.stderr,
    )
    return 1 if check else 0
