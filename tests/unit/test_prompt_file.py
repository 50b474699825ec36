"""Contract 1: every validation rule has a failing case with its expected message."""

from __future__ import annotations

import json

import pytest

from wanbatch.errors import PromptFileError
from wanbatch.prompts import MAX_FILE_BYTES, MAX_PROMPTS, parse_prompt_file


def errors_of(data: bytes | str | object, *, name: str = "prompts/x.json") -> list[str]:
    if not isinstance(data, bytes | str):
        data = json.dumps(data)
    raw = data.encode() if isinstance(data, str) else data
    with pytest.raises(PromptFileError) as info:
        parse_prompt_file(raw, name=name)
    return [error.describe() for error in info.value.errors]


def test_full_object_form_is_valid() -> None:
    parsed = parse_prompt_file(
        json.dumps(
            {
                "gpus": 1,
                "model": {"id": "Wan-AI/Wan2.2-T2V-A14B-Diffusers", "revision": "abc123"},
                "defaults": {
                    "size": "1280*720",
                    "num_frames": 81,
                    "fps": 16,
                    "steps": 40,
                    "guidance_scale": 4.0,
                    "guidance_scale_2": 3.0,
                    "flow_shift": 12.0,
                    "negative_prompt": "blurry",
                    "seed": 42,
                },
                "prompts": [
                    "A serene lake at sunset",
                    {"id": "cat", "prompt": "A cat walks on the grass", "seed": 7, "size": "832x480"},
                ],
            }
        ).encode()
    )
    assert parsed.item_ids == ["p0000", "cat"]
    assert parsed.prompts[1].size == "832*480"  # WxH normalised


def test_bare_array_jsonl_and_bom_are_accepted() -> None:
    assert parse_prompt_file(b'["a", {"prompt": "b"}]').item_ids == ["p0000", "p0001"]
    jsonl = '\ufeff"first"\n\n{"id": "two", "prompt": "second"}\n'.encode()
    assert parse_prompt_file(jsonl, name="x.jsonl").item_ids == ["p0000", "two"]
    assert parse_prompt_file('\ufeff["a"]'.encode()).prompts[0].prompt == "a"


def test_prompt_is_trimmed() -> None:
    assert parse_prompt_file(b'["  a cat \\n"]').prompts[0].prompt == "a cat"


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", "file: file is empty"),
        (b"  \n", "file: file is empty"),
        (b"{}", "field 'prompts': required field is missing"),
        (b"[]", "field 'prompts': at least 1 prompt is required"),
        (b"null", 'file: expected an object with "prompts" or an array of prompts, got null'),
        (b'"a"', 'file: expected an object with "prompts" or an array of prompts, got a string'),
        (b"\xff\xfe[]", "file: file is not UTF-8 text (bad byte at offset 0)"),
        (
            b'{"prompts": ["a"],}',
            "file: not valid JSON: Expecting property name enclosed in double quotes: "
            "line 1 column 19 (char 18)",
        ),
        (
            b'{"prompts": ["a"], "prompts": ["b"]}',
            "file: not valid JSON: duplicate key 'prompts' (the later one would silently win)",
        ),
        (b'[{"prompt": "a", "seed": NaN}]', "file: not valid JSON: NaN is not a number"),
        (b"[" * 100_000, "file: not valid JSON: nested too deeply"),
        (
            b'["\\ud800 cat"]',
            "file: not valid JSON: a \\u escape encodes half a character (a lone surrogate)",
        ),
        (
            b'"a"\n"b"\n',
            "file: not valid JSON: Extra data: line 2 column 1 (char 4) "
            "(for one prompt per line, name the file .jsonl)",
        ),
    ],
)
def test_file_level_errors(data: bytes, expected: str) -> None:
    assert errors_of(data) == [expected]


def test_file_size_cap() -> None:
    data = b'["' + b"a" * MAX_FILE_BYTES + b'"]'
    assert errors_of(data) == [f"file: file is {len(data)} bytes; the limit is {MAX_FILE_BYTES} (5 MiB)"]


def test_too_many_prompts() -> None:
    assert errors_of(["p"] * (MAX_PROMPTS + 1)) == [
        f"field 'prompts': {MAX_PROMPTS + 1} prompts; the limit is 10000"
    ]


def test_jsonl_bad_line_names_line_and_item() -> None:
    assert errors_of(b'"a"\n{bad\n', name="x.jsonl") == [
        "item 1: line 2 is not valid JSON: "
        "Expecting property name enclosed in double quotes: line 1 column 2 (char 1)"
    ]


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        ({"prompt": "x", "stepz": 30}, "field 'stepz': unknown field; did you mean 'steps'?"),
        (
            {"prompt": "x", "colour": "red"},
            "field 'colour': unknown field; allowed: size, num_frames, fps, steps, "
            "guidance_scale, guidance_scale_2, flow_shift, negative_prompt, seed, "
            "id, prompt",
        ),
        ({"seed": 1}, "field 'prompt': required field is missing"),
        ({"prompt": "   "}, "field 'prompt': prompt is empty (after trimming whitespace)"),
        ({"prompt": "x" * 4001}, "field 'prompt': prompt has 4001 characters; the limit is 4000"),
        ({"prompt": 5}, "field 'prompt': Input should be a valid string (got 5)"),
        (
            {"prompt": "x", "size": "640*480"},
            "field 'size': size '640*480' is not supported; use one of 1280*720, 720*1280, 832*480, 480*832",
        ),
        (
            {"prompt": "x", "size": "big"},
            "field 'size': size must look like W*H (one of 1280*720, 720*1280, 832*480, 480*832), got 'big'",
        ),
        (
            {"prompt": "x", "num_frames": 80},
            "field 'num_frames': num_frames must be 4k+1 (e.g. 77, 81, 85), got 80",
        ),
        (
            {"prompt": "x", "num_frames": 1},
            "field 'num_frames': Input should be greater than or equal to 5 (got 1)",
        ),
        (
            {"prompt": "x", "num_frames": 205},
            "field 'num_frames': Input should be less than or equal to 201 (got 205)",
        ),
        ({"prompt": "x", "steps": 0}, "field 'steps': Input should be greater than or equal to 1 (got 0)"),
        ({"prompt": "x", "steps": 101}, "field 'steps': Input should be less than or equal to 100 (got 101)"),
        ({"prompt": "x", "steps": "40"}, "field 'steps': Input should be a valid integer (got '40')"),
        ({"prompt": "x", "steps": 40.5}, "field 'steps': Input should be a valid integer (got 40.5)"),
        (
            {"prompt": "x", "guidance_scale": -1},
            "field 'guidance_scale': Input should be greater than or equal to 0 (got -1)",
        ),
        (
            {"prompt": "x", "guidance_scale_2": 21},
            "field 'guidance_scale_2': Input should be less than or equal to 20 (got 21)",
        ),
        ({"prompt": "x", "flow_shift": 0}, "field 'flow_shift': Input should be greater than 0 (got 0)"),
        (
            {"prompt": "x", "flow_shift": 31},
            "field 'flow_shift': Input should be less than or equal to 30 (got 31)",
        ),
        ({"prompt": "x", "fps": 0}, "field 'fps': Input should be greater than or equal to 1 (got 0)"),
        ({"prompt": "x", "fps": 61}, "field 'fps': Input should be less than or equal to 60 (got 61)"),
        ({"prompt": "x", "seed": -1}, "field 'seed': Input should be greater than or equal to 0 (got -1)"),
        (
            {"prompt": "x", "seed": 2**32},
            "field 'seed': Input should be less than 4294967296 (got 4294967296)",
        ),
        ({"prompt": "x", "seed": True}, "field 'seed': Input should be a valid integer (got true)"),
        ({"prompt": "x", "seed": 1.5}, "field 'seed': Input should be a valid integer (got 1.5)"),
        (
            {"prompt": "x", "negative_prompt": "n" * 4001},
            "field 'negative_prompt': String should have at most 4000 characters (got ",
        ),
    ],
)
def test_item_field_errors_name_index_id_and_field(item: dict, expected: str) -> None:
    [message] = errors_of({"prompts": ["fine", item]})
    assert message.startswith(f"item 1, id 'p0001', {expected}")


@pytest.mark.parametrize(
    ("item_id", "expected"),
    [
        ("a/b", "got 'a/b'"),
        ("../etc", "got '../etc'"),
        ("", "got ''"),
        ("x" * 65, "got 'xxxx"),
        ("café", "got 'café'"),
    ],
)
def test_ids_are_never_paths(item_id: str, expected: str) -> None:
    [message] = errors_of([{"id": item_id, "prompt": "x"}])
    assert message.startswith(
        f"item 0, id {item_id!r}, field 'id': id must be 1-64 letters, digits, '_' or '-'"
    )
    assert expected in message


def test_duplicate_ids_explicit_and_automatic() -> None:
    assert errors_of([{"id": "a", "prompt": "x"}, {"id": "a", "prompt": "y"}]) == [
        "item 1, id 'a', field 'id': duplicate id; item 0 already uses it"
    ]
    assert errors_of(["x", {"id": "p0000", "prompt": "y"}]) == [
        "item 1, id 'p0000', field 'id': duplicate id; item 0 already uses it (the automatic id of item 0)"
    ]


def test_non_object_item() -> None:
    assert errors_of(["x", 7, None]) == [
        "item 1: each prompt must be a string or an object, got a number",
        "item 2: each prompt must be a string or an object, got null",
    ]


def test_file_level_fields() -> None:
    assert errors_of({"gpu": 1, "prompts": ["x"]}) == ["field 'gpu': unknown field; did you mean 'gpus'?"]
    assert errors_of({"gpus": 0, "prompts": ["x"]}) == [
        "field 'gpus': Input should be greater than or equal to 1 (got 0)"
    ]
    assert errors_of({"gpus": 9, "prompts": ["x"]}) == [
        "field 'gpus': Input should be less than or equal to 8 (got 9)"
    ]
    assert errors_of({"model": {"id": "a b"}, "prompts": ["x"]}) == [
        "field 'model.id': String should match pattern '^\\S+$' (got 'a b')"
    ]
    assert errors_of({"model": {"repo": "x"}, "prompts": ["x"]}) == [
        "field 'model.id': required field is missing",
        "field 'model.repo': unknown field; allowed: id, revision",
    ]
    assert errors_of({"defaults": {"stepz": 3, "prompt": "x"}, "prompts": ["x"]}) == [
        "field 'defaults.stepz': unknown field; did you mean 'steps'?",
        "field 'defaults.prompt': unknown field; allowed: size, num_frames, fps, steps, guidance_scale, "
        "guidance_scale_2, flow_shift, negative_prompt, seed",
    ]


def test_every_error_is_reported_not_just_the_first() -> None:
    messages = errors_of(
        {"defaults": {"fps": 0}, "prompts": [{"prompt": "", "steps": 0}, {"id": "b/c", "prompt": "x"}]}
    )
    assert len(messages) == 4
    assert messages[0].startswith("field 'defaults.fps'")
    assert messages[1].startswith("item 0, id 'p0000', field 'steps'")
    assert messages[2].startswith("item 0, id 'p0000', field 'prompt'")
    assert messages[3].startswith("item 1, id 'b/c', field 'id'")
