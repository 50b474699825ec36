"""Property: random and mangled files never make the validator raise anything but PromptFileError."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wanbatch.errors import PromptFileError
from wanbatch.prompts import BUILTIN_DEFAULTS, PromptFile, parse_prompt_file

FIELDS = [*BUILTIN_DEFAULTS, "seed", "id", "prompt", "gpus", "model", "defaults", "prompts", "stepz"]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=5), children, max_size=4)
    ),
    max_leaves=20,
)
plausible_item = st.one_of(
    st.text(max_size=30),
    st.fixed_dictionaries(
        {"prompt": st.text(max_size=30)}, optional={name: json_values for name in FIELDS if name != "prompt"}
    ),
)
plausible_file = st.one_of(
    st.lists(plausible_item, max_size=5),
    st.fixed_dictionaries(
        {"prompts": st.lists(plausible_item, max_size=5)},
        optional={"gpus": json_values, "model": json_values, "defaults": json_values},
    ),
)
VALID = json.dumps(
    {"defaults": {"size": "832*480", "seed": 3}, "prompts": ["a", {"id": "b", "prompt": "c", "steps": 30}]}
).encode()


def check(data: bytes, name: str = "f.json") -> None:
    try:
        assert isinstance(parse_prompt_file(data, name=name), PromptFile)
    except PromptFileError as err:
        assert err.errors, "a rejection always says why"
        for error in err.errors:
            assert error.describe()  # every error renders


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=200), st.sampled_from(["f.json", "f.jsonl"]))
def test_random_bytes(data: bytes, name: str) -> None:
    check(data, name)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_random_json_documents(value: object) -> None:
    check(json.dumps(value).encode())


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plausible_file, st.sampled_from(["f.json", "f.jsonl"]))
def test_plausible_files(value: object, name: str) -> None:
    if name.endswith(".jsonl") and isinstance(value, list):
        check("\n".join(json.dumps(item) for item in value).encode(), name)
    else:
        check(json.dumps(value).encode(), name)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, len(VALID)), st.integers(0, 3), st.binary(max_size=3)), max_size=4))
def test_mangled_valid_file(edits: list[tuple[int, int, bytes]]) -> None:
    data = bytearray(VALID)
    for position, delete, insert in edits:
        data[position : position + delete] = insert
    check(bytes(data))
