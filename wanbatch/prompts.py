"""Contract 1: the prompt file users write, parsed and validated in one place.

The submit Lambda and `wanbatch validate` both call `parse_prompt_file`, so a rejection record and the CLI
print the same messages. Every problem is collected (not just the first) and raised as one PromptFileError.
"""

from __future__ import annotations

import difflib
import json
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from wanbatch.errors import FieldError, PromptFileError
from wanbatch.spec import ITEM_ID_PATTERN, MAX_SEED, parse_size

MAX_FILE_BYTES = 5 * 1024 * 1024  # 10,000 prompts of ~400 characters fit with room to spare
MAX_PROMPTS = 10_000  # also AWS Batch's largest array size
MAX_PROMPT_CHARS = 4_000
MAX_GPUS = 8
MIN_FRAMES, MAX_FRAMES = 5, 201  # 4k+1; 81 at 16 fps is the model card's 5 seconds

# The model card's settings, used where neither the item nor the file's `defaults` says otherwise.
# The negative prompt is Wan's own default (generate.py's `sample_neg_prompt`), which the original
# run.sh deployment used.
WAN_DEFAULT_NEGATIVE_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，"
    "JPEG压缩残留，丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，"
    "手指融合，静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走"
)
BUILTIN_DEFAULTS: dict[str, Any] = {
    "size": "1280*720",
    "num_frames": 81,
    "fps": 16,
    "steps": 40,
    "guidance_scale": 4.0,
    "guidance_scale_2": 3.0,
    "flow_shift": 12.0,
    "negative_prompt": WAN_DEFAULT_NEGATIVE_PROMPT,
}
_ID_RE = re.compile(ITEM_ID_PATTERN)


class _Strict(BaseModel):
    # strict: "40" is not 40 and true is not 1; forbid: a typo such as `stepz` is an error, not a default.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class Settings(_Strict):
    """What an item may override; also the shape of the file's `defaults`."""

    size: str | None = None
    num_frames: int | None = Field(default=None, ge=MIN_FRAMES, le=MAX_FRAMES)
    fps: int | None = Field(default=None, ge=1, le=60)
    steps: int | None = Field(default=None, ge=1, le=100)
    guidance_scale: float | None = Field(default=None, ge=0, le=20)
    guidance_scale_2: float | None = Field(default=None, ge=0, le=20)
    flow_shift: float | None = Field(default=None, gt=0, le=30)
    negative_prompt: str | None = Field(default=None, max_length=MAX_PROMPT_CHARS)
    seed: int | None = Field(default=None, ge=0, lt=MAX_SEED)

    @field_validator("size")
    @classmethod
    def _size(cls, value: str | None) -> str | None:
        if value is None:
            return None
        width, height = parse_size(value)
        return f"{width}*{height}"  # WxH normalised to Wan's W*H

    @field_validator("num_frames")
    @classmethod
    def _frames(cls, value: int | None) -> int | None:
        if value is not None and (value - 1) % 4:
            raise ValueError(f"num_frames must be 4k+1 (e.g. 77, 81, 85), got {value}")
        return value


class PromptItem(Settings):
    id: str | None = None
    prompt: str

    @model_validator(mode="before")
    @classmethod
    def _bare_string(cls, data: Any) -> Any:
        if isinstance(data, str):
            return {"prompt": data}
        if not isinstance(data, dict):
            raise ValueError(f"each prompt must be a string or an object, got {_json_type(data)}")
        return data

    @field_validator("id")
    @classmethod
    def _id(cls, value: str | None) -> str | None:
        if value is not None and not _ID_RE.match(value):
            raise ValueError(
                f"id must be 1-64 letters, digits, '_' or '-' (it names the output files), got {value!r}"
            )
        return value

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, value: str) -> str:
        text = value.strip()
        if not text:
            raise ValueError("prompt is empty (after trimming whitespace)")
        if len(text) > MAX_PROMPT_CHARS:
            raise ValueError(f"prompt has {len(text)} characters; the limit is {MAX_PROMPT_CHARS}")
        return text


class ModelChoice(_Strict):
    id: str = Field(min_length=1, max_length=200, pattern=r"^\S+$")
    revision: str | None = Field(default=None, min_length=1, max_length=200, pattern=r"^\S+$")


class PromptFile(_Strict):
    gpus: int = Field(default=1, ge=1, le=MAX_GPUS)
    model: ModelChoice | None = None
    defaults: Settings = Settings()
    prompts: list[PromptItem] = Field(min_length=1, max_length=MAX_PROMPTS)

    @property
    def item_ids(self) -> list[str]:
        """Each item's id: its own, or `p0000`, `p0001`, ... by position."""
        return [item.id or auto_id(index) for index, item in enumerate(self.prompts)]


def auto_id(index: int) -> str:
    return f"p{index:04d}"


def parse_prompt_file(data: bytes, *, name: str = "") -> PromptFile:
    """Bytes of a prompt file -> PromptFile; raises PromptFileError listing every problem.

    `name` (the key or path) picks the format: `.jsonl` is one prompt per line, anything else is one JSON
    document (an object with `prompts`, or a bare array).
    """
    raw = _load(data, jsonl=name.endswith(".jsonl"))
    if isinstance(raw, list):
        raw = {"prompts": raw}
    elif not isinstance(raw, dict):
        raise PromptFileError(
            [FieldError(f'expected an object with "prompts" or an array of prompts, got {_json_type(raw)}')]
        )
    try:
        parsed = PromptFile.model_validate(raw)
    except ValidationError as exc:
        raise PromptFileError([_field_error(err, raw) for err in exc.errors()]) from None
    _check_unique_ids(parsed)
    return parsed


def _load(data: bytes, *, jsonl: bool) -> Any:
    """Decode and parse JSON or JSONL; file-level problems are raised as PromptFileError."""
    if len(data) > MAX_FILE_BYTES:
        raise PromptFileError(
            [FieldError(f"file is {len(data)} bytes; the limit is {MAX_FILE_BYTES} (5 MiB)")]
        )
    try:
        text = data.decode("utf-8-sig")  # a BOM is fine
    except UnicodeDecodeError as exc:
        raise PromptFileError(
            [FieldError(f"file is not UTF-8 text (bad byte at offset {exc.start})")]
        ) from None
    if not text.strip():
        raise PromptFileError([FieldError("file is empty")])
    if not jsonl:
        try:
            return _loads(text)
        except ValueError as exc:
            hint = " (for one prompt per line, name the file .jsonl)" if text.count("\n") > 1 else ""
            raise PromptFileError([FieldError(f"not valid JSON: {exc}{hint}")]) from None
    items, errors = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            items.append(_loads(line))
        except ValueError as exc:
            errors.append(FieldError(f"line {number} is not valid JSON: {exc}", index=len(items)))
            items.append(None)
    if errors:
        raise PromptFileError(errors)
    return items


def _loads(text: str) -> Any:
    try:
        value = json.loads(text, object_pairs_hook=_no_duplicate_keys, parse_constant=_no_constants)
        # A \ud800-style escape decodes to a lone surrogate, which no output (spec, S3 key, log) can encode.
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except RecursionError:
        raise ValueError("nested too deeply") from None
    except UnicodeEncodeError:
        raise ValueError("a \\u escape encodes half a character (a lone surrogate)") from None
    return value


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r} (the later one would silently win)")
        result[key] = value
    return result


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not a number")


def _field_error(err: dict, raw: dict) -> FieldError:
    """pydantic's error -> FieldError naming the item (index and id) and the field."""
    loc = list(err["loc"])
    index = item_id = None
    if len(loc) >= 2 and loc[0] == "prompts" and isinstance(loc[1], int):
        index = loc[1]
        item = raw["prompts"][index]
        if isinstance(item, dict) and isinstance(item.get("id"), str):
            item_id = item["id"]
        elif isinstance(item, str | dict):
            item_id = auto_id(index)
        loc = loc[2:]
    field = ".".join(str(part) for part in loc) or None
    return FieldError(
        _message(err, field, in_item=index is not None), index=index, item_id=item_id, field=field
    )


def _message(err: dict, field: str | None, *, in_item: bool) -> str:
    kind, msg = err["type"], err["msg"]
    if kind == "extra_forbidden":
        return _unknown_field(field or "", in_item=in_item)
    if kind == "missing":
        return "required field is missing"
    if field == "prompts" and kind == "too_short":
        return "at least 1 prompt is required"
    if field == "prompts" and kind == "too_long":
        return f"{len(err['input'])} prompts; the limit is {MAX_PROMPTS}"
    if kind == "value_error":  # our own validators' messages already name the value
        return msg.removeprefix("Value error, ")
    return f"{msg} (got {_short(err['input'])})"


def _unknown_field(field: str, *, in_item: bool) -> str:
    parent, _, name = field.rpartition(".")
    if in_item:
        allowed = PromptItem.model_fields
    else:
        allowed = {
            "": PromptFile.model_fields,
            "defaults": Settings.model_fields,
            "model": ModelChoice.model_fields,
        }.get(parent, {})
    close = difflib.get_close_matches(name, list(allowed), n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"allowed: {', '.join(allowed)}"
    return f"unknown field; {hint}"


def _check_unique_ids(parsed: PromptFile) -> None:
    seen: dict[str, int] = {}
    errors = []
    for index, item_id in enumerate(parsed.item_ids):
        if item_id in seen:
            first = seen[item_id]
            why = "" if parsed.prompts[first].id else f" (the automatic id of item {first})"
            errors.append(
                FieldError(f"duplicate id; item {first} already uses it{why}", index, item_id, "id")
            )
        else:
            seen[item_id] = index
    if errors:
        raise PromptFileError(errors)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    return {
        bool: "a boolean",
        int: "a number",
        float: "a number",
        str: "a string",
        list: "an array",
        dict: "an object",
    }.get(type(value), type(value).__name__)


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
