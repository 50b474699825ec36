"""`wanbatch validate`: exit codes, the same messages as the rejection record, never a traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from wanbatch.cli.main import COMMANDS, main
from wanbatch.errors import PromptFileError
from wanbatch.prompts import parse_prompt_file

BAD = {"prompts": ["ok", {"prompt": "x", "stepz": 3}, {"id": "a/b", "prompt": " ", "seed": -1}]}


def test_valid_file_exits_0(tmp_path: Path, capsys) -> None:
    path = tmp_path / "good.jsonl"
    path.write_text('"a cat"\n{"id": "dog", "prompt": "a dog"}\n')
    assert main(["validate", str(path)]) == 0
    assert capsys.readouterr().out == f"{path}: valid, 2 prompt(s), gpus 1\n"


def test_invalid_file_prints_every_error_like_the_rejection_record(tmp_path: Path, capsys) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(BAD))
    assert main(["validate", str(path)]) == 1
    err = capsys.readouterr().err.splitlines()
    with pytest.raises(PromptFileError) as info:
        parse_prompt_file(path.read_bytes(), name=str(path))
    # lambdas.submit.submit.write_rejection stores exactly these `describe()` lines as `messages`.
    assert err[0] == f"{path}: 4 error(s)"
    assert err[1:] == [e.describe() for e in info.value.errors]
    assert err[1] == "item 1, id 'p0001', field 'stepz': unknown field; did you mean 'steps'?"


def test_missing_file_is_a_message_not_a_traceback(tmp_path: Path, capsys) -> None:
    assert main(["validate", str(tmp_path / "nope.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot read ") and "Traceback" not in err


def test_format_option_reads_jsonl_from_stdin(monkeypatch, capsys) -> None:
    class Stdin:
        buffer = __import__("io").BytesIO(b'"a"\n"b"\n')

    monkeypatch.setattr(sys, "stdin", Stdin)
    assert main(["validate", "--format", "jsonl", "-"]) == 0
    assert "2 prompt(s)" in capsys.readouterr().out


def test_commands_register_in_one_line() -> None:
    names = [command.NAME for command in COMMANDS]
    assert names == ["validate", "submit", "status", "fetch", "cancel", "warm", "run", "reproduce"]
    for command in COMMANDS:
        assert callable(command.run) and callable(command.add_arguments) and command.HELP and command.EXAMPLES


def test_console_script_in_venv_on_a_bad_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_bytes(b"\xff not utf-8")
    script = Path(sys.executable).with_name("wanbatch")
    done = subprocess.run([str(script), "validate", str(path)], capture_output=True, text=True, check=False)
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        f"{path}: 1 error(s)",
        "file: file is not UTF-8 text (bad byte at offset 0)",
    ]
    assert "Traceback" not in done.stderr and done.stdout == ""
