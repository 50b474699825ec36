"""A manifest (contract 3) -> the one-item prompt file that renders its video again, everything pinned."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from wanbatch.errors import CLIError
from wanbatch.manifest import Manifest

# Item settings a prompt file accepts, as the manifest records them (size is rebuilt from width*height).
_SETTINGS = ("negative_prompt", "seed", "num_frames", "fps", "steps", "guidance_scale", "guidance_scale_2",
             "flow_shift")  # fmt: skip


def load_manifest(raw: bytes, *, name: str) -> Manifest:
    try:
        return Manifest.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "file"
        raise CLIError(
            f"{name} is not a wanbatch manifest "
            f"({exc.error_count()} problem(s); first: {where}: {first['msg']})"
        ) from None


def pinned_revision(manifest: Manifest) -> str:
    """The commit the render used; a local folder has none, so its recorded revision stands."""
    return manifest.model.commit or manifest.model.revision


def prompt_file_for(manifest: Manifest, *, model_id: str | None = None) -> dict[str, Any]:
    """The prompt file (contract 1) for this video: model revision pinned to the commit, every setting set."""
    item = {"id": manifest.item_id, "prompt": manifest.prompt,
            "size": f"{manifest.width}*{manifest.height}"}  # fmt: skip
    item.update({name: getattr(manifest, name) for name in _SETTINGS})
    return {
        "gpus": 1,
        "model": {"id": model_id or manifest.model.repo_id, "revision": pinned_revision(manifest)},
        "prompts": [item],
    }


def prompt_file_bytes(manifest: Manifest, *, model_id: str | None = None) -> bytes:
    return json.dumps(prompt_file_for(manifest, model_id=model_id), indent=2, ensure_ascii=False).encode()


def file_name(manifest: Manifest) -> str:
    """`reproduce-<item>-<run_id>.json`: the run id of the reproduction starts with this (slugified) stem."""
    return f"reproduce-{manifest.item_id}-{manifest.run_id}.json"


def local_model_moved(manifest: Manifest) -> bool:
    return manifest.model.source == "local" and not Path(manifest.model.repo_id).expanduser().is_dir()
