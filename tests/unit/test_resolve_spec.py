"""Prompt file -> run spec (contract 4): defaults, seeds, model, ids."""

from __future__ import annotations

import json

from wanbatch.prompts import WAN_DEFAULT_NEGATIVE_PROMPT, parse_prompt_file
from wanbatch.resolve import resolve_run
from wanbatch.spec import ModelRef, Source, derive_seed, parse_spec

DEPLOYED = ModelRef(id="Wan-AI/Wan2.2-T2V-A14B-Diffusers", revision="deadbeef")
SOURCE = Source(bucket="b", key="prompts/x.json", etag="e")


def resolve(document: object, run_id: str = "x-20260101T000000Z-00000000"):
    return resolve_run(
        parse_prompt_file(json.dumps(document).encode()), run_id=run_id, source=SOURCE, default_model=DEPLOYED
    )


def test_model_card_defaults_apply_when_nothing_is_said() -> None:
    spec = resolve(["a cat"])
    [item] = spec.items
    assert (item.width, item.height, item.num_frames, item.fps, item.steps) == (1280, 720, 81, 16, 40)
    assert (item.guidance_scale, item.guidance_scale_2, item.flow_shift) == (4.0, 3.0, 12.0)
    assert item.negative_prompt == WAN_DEFAULT_NEGATIVE_PROMPT
    assert spec.model == DEPLOYED and spec.gpus == 1 and spec.items_per_job == 1


def test_item_overrides_file_defaults_override_builtin() -> None:
    spec = resolve(
        {
            "defaults": {"size": "832*480", "steps": 30, "seed": 5, "negative_prompt": ""},
            "prompts": ["a", {"id": "b", "prompt": "b", "steps": 20, "size": "480x832", "seed": 9}],
        }
    )
    a, b = spec.items
    assert (a.width, a.height, a.steps, a.seed, a.negative_prompt) == (832, 480, 30, 5, "")
    assert (b.width, b.height, b.steps, b.seed) == (480, 832, 20, 9)


def test_missing_seeds_are_derived_deterministically_per_run_and_item() -> None:
    first = resolve(["a", "b"], run_id="r-1")
    again = resolve(["a", "b"], run_id="r-1")
    other_run = resolve(["a", "b"], run_id="r-2")
    assert [i.seed for i in first.items] == [derive_seed("r-1", "p0000"), derive_seed("r-1", "p0001")]
    assert first == again
    assert [i.seed for i in other_run.items] != [i.seed for i in first.items]


def test_model_from_file_and_revision_rules() -> None:
    assert resolve({"model": {"id": "me/other", "revision": "v2"}, "prompts": ["x"]}).model == ModelRef(
        id="me/other", revision="v2"
    )
    assert resolve({"model": {"id": "me/other"}, "prompts": ["x"]}).model.revision == "main"
    # Naming the deployed model without a revision keeps the deployment's pinned revision.
    assert resolve({"model": {"id": DEPLOYED.id}, "prompts": ["x"]}).model == DEPLOYED


def test_spec_round_trips_through_the_job_parser() -> None:
    spec = resolve({"gpus": 2, "prompts": ["a", {"id": "z", "prompt": "b"}]})
    assert parse_spec(spec.model_dump_json()) == spec
    assert spec.gpus == 2 and [i.id for i in spec.items] == ["p0000", "z"]
