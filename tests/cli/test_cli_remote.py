"""`submit`, `status`, `fetch`, `cancel`, `warm` against the stack in moto, through `main([...])`."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from tests.cli.conftest import BUCKET, STACK, FakeStack, SubmitLambda, manifest_stub
from wanbatch import layout
from wanbatch.cli.main import main

PROMPTS = {
    "defaults": {"size": "832*480", "num_frames": 5, "steps": 6},
    "prompts": ["A lake at sunset", "A cat on grass", "A dog in snow", {"id": "owl", "prompt": "An owl"}],
}


def write_prompts(tmp_path: Path, body: dict | str = PROMPTS, name: str = "holiday.json") -> Path:
    path = tmp_path / name
    path.write_text(body if isinstance(body, str) else json.dumps(body))
    return path


def submit(tmp_path: Path, capsys, *extra: str, body: dict | str = PROMPTS) -> str:
    assert main(["submit", str(write_prompts(tmp_path, body)), "--interval", "0.05", *extra]) == 0
    return capsys.readouterr().out.strip()


# --- submit -------------------------------------------------------------------------------------------


def test_submit_uploads_waits_for_the_lambda_and_prints_the_run_id(
    stack: FakeStack, submit_lambda: SubmitLambda, tmp_path: Path, capsys
) -> None:
    run_id = submit(tmp_path, capsys)

    assert re.fullmatch(r"holiday-\d{8}T\d{6}Z-[0-9a-f]{8}", run_id)
    assert stack.keys(layout.PROMPTS_PREFIX) == ["prompts/holiday.json"]
    [outcome] = submit_lambda.outcomes_after(1)
    assert (outcome["status"], outcome["run_id"]) == ("submitted", run_id)
    record = stack.get_json(layout.run_record_key(run_id))
    assert record["source"]["key"] == "prompts/holiday.json" and record["item_count"] == 4


def test_submitting_the_same_file_again_waits_for_the_new_run(
    stack: FakeStack, submit_lambda: SubmitLambda, tmp_path: Path, capsys
) -> None:
    first = submit(tmp_path, capsys, "-q")
    time.sleep(1.05 - time.time() % 1)  # the watcher tells uploads apart by LastModified (whole seconds)
    second = submit(tmp_path, capsys, "-q")  # same key and etag: only a run.json new since the upload counts

    assert [o["run_id"] for o in submit_lambda.outcomes_after(2)] == [first, second]
    assert first != second


def test_a_run_of_the_same_upload_from_the_same_second_is_not_taken_for_the_new_one(stack: FakeStack) -> None:
    from wanbatch.client.submission import find_answer, upload_prompt_file

    body = json.dumps(PROMPTS).encode()
    etag = stack.s3.put_object(Bucket=BUCKET, Key="prompts/holiday.json", Body=body)["ETag"].strip('"')
    old = "runs/holiday-20250101T000000Z-00000000/run.json"
    stack.put_json(old, {"run_id": "old", "source": {"key": "prompts/holiday.json", "etag": etag}})

    upload = upload_prompt_file(stack.s3, BUCKET, "prompts/holiday.json", body)
    assert upload.earlier_runs == {old}
    assert find_answer(stack.s3, upload) is None
    new = "runs/holiday-20250101T000001Z-11111111/run.json"
    stack.put_json(new, {"run_id": "new", "source": {"key": "prompts/holiday.json", "etag": etag}})
    assert find_answer(stack.s3, upload)["run_id"] == "new"


def test_submit_prefix_uploads_under_a_folder(
    stack: FakeStack, submit_lambda: SubmitLambda, tmp_path: Path, capsys
) -> None:
    run_id = submit(tmp_path, capsys, "--prefix", "team-a/")
    assert stack.get_json(layout.run_record_key(run_id))["source"]["key"] == "prompts/team-a/holiday.json"


def test_invalid_file_is_not_uploaded(stack: FakeStack, tmp_path: Path, capsys) -> None:
    path = write_prompts(tmp_path, {"prompts": [{"prompt": "x", "stepz": 3}]})
    assert main(["submit", str(path)]) == 1
    err = capsys.readouterr().err
    assert "field 'stepz': unknown field; did you mean 'steps'?" in err
    assert stack.keys(layout.PROMPTS_PREFIX) == []


def test_a_rejection_by_the_deployment_exits_1_with_its_errors(
    stack: FakeStack, submit_lambda: SubmitLambda, tmp_path: Path, capsys
) -> None:
    # Valid locally (up to 8 GPUs), but this deployment offers 1-GPU jobs only.
    code = main(["submit", str(write_prompts(tmp_path, {"gpus": 2, "prompts": ["a"]})), "--interval", "0.05"])

    captured = capsys.readouterr()
    cli_out = [line for line in captured.out.splitlines() if not line.startswith('{"level"')]  # the Lambda's
    assert code == 1 and cli_out == []
    assert "rejected prompts/holiday.json" in captured.err
    assert "field 'gpus': this deployment offers gpus 1; got 2" in captured.err
    assert "Traceback" not in captured.err


def test_no_answer_times_out_with_exit_5(stack: FakeStack, tmp_path: Path, capsys) -> None:
    code = main(["submit", str(write_prompts(tmp_path)), "--timeout", "0.2", "--interval", "0.05"])
    assert code == 5
    assert "no run for s3://" in capsys.readouterr().err
    assert stack.keys(layout.PROMPTS_PREFIX) == ["prompts/holiday.json"]  # the upload stays


def test_no_wait_prints_the_uploaded_uri(stack: FakeStack, tmp_path: Path, capsys) -> None:
    assert main(["submit", str(write_prompts(tmp_path)), "--no-wait"]) == 0
    assert capsys.readouterr().out == f"s3://{BUCKET}/prompts/holiday.json\n"


def test_wrong_suffix_and_missing_file_are_usage_errors(stack: FakeStack, tmp_path: Path, capsys) -> None:
    assert main(["submit", str(write_prompts(tmp_path, name="holiday.txt"))]) == 2
    assert "only takes .json and .jsonl" in capsys.readouterr().err
    assert main(["submit", str(tmp_path / "missing.json")]) == 2
    assert "cannot read" in capsys.readouterr().err


# --- the stack lookup ----------------------------------------------------------------------------------


def test_unknown_stack_exits_3_naming_the_fix(stack: FakeStack, tmp_path: Path, capsys) -> None:
    assert main(["status", "some-run", "--stack", "Nope"]) == 3
    err = capsys.readouterr().err
    assert "stack 'Nope' not found" in err and "--stack" in err and "Traceback" not in err


def test_stack_name_comes_from_the_environment(
    stack: FakeStack, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setenv("WANBATCH_STACK", "Elsewhere")
    assert main(["warm"]) == 3
    assert "stack 'Elsewhere' not found" in capsys.readouterr().err
    assert main(["warm", "--stack", STACK]) == 0


def test_a_stack_without_our_outputs_is_named(stack: FakeStack, capsys) -> None:
    import boto3

    template = {"Resources": {"B": {"Type": "AWS::S3::Bucket"}}, "Outputs": {"BucketName": {"Value": "x"}}}
    boto3.client("cloudformation").create_stack(StackName="Other", TemplateBody=json.dumps(template))
    assert main(["warm", "--stack", "Other"]) == 3
    assert "has no output(s) JobQueueArn, JobDefinitionArn" in capsys.readouterr().err


# --- status --------------------------------------------------------------------------------------------


def with_outputs(stack: FakeStack, run_id: str) -> None:
    """The worker's files for a run of 4 items: done, running, failed, pending."""
    stack.put_json(layout.manifest_key(run_id, "p0000"), manifest_stub(run_id, "p0000"))
    stack.s3.put_object(Bucket=BUCKET, Key=layout.video_key(run_id, "p0000"), Body=b"\x00mp4" * 100)
    stack.put_json(layout.progress_key(run_id, "p0001"), {
        "run_id": run_id, "item": "p0001", "state": "denoising", "attempt": 2, "total_steps": 6, "step": 4,
        "expert": "low_noise", "s_per_step": 1.5, "eta_s": 3.0,
    })  # fmt: skip
    stack.put_json(layout.error_key(run_id, "p0002"), {"type": "OutOfMemoryError", "message": "CUDA OOM"})


def test_status_table_shows_each_state_with_step_and_eta(
    stack: FakeStack, submit_lambda: SubmitLambda, tmp_path: Path, capsys
) -> None:
    run_id = submit(tmp_path, capsys)
    with_outputs(stack, run_id)

    assert main(["status", run_id]) == 0
    out = capsys.readouterr().out
    assert f"run {run_id}" in out
    assert "items 4: 1 done, 1 failed, 1 running, 1 pending" in out
    rows = {line.split()[0]: line for line in out.splitlines()[4:]}
    assert rows["p0000"].split()[1:3] == ["done", "6/6"]
    assert rows["p0001"].split()[1:4] == ["running", "4/6", "3s"]
    assert "expert low_noise" in rows["p0001"] and "attempt 2" in rows["p0001"]
    assert "failed" in rows["p0002"] and "OutOfMemoryError: CUDA OOM" in rows["p0002"]
    assert rows["owl"].split()[1] == "pending"


def test_status_json_is_machine_readable(
    stack: FakeStack, submit_lambda: SubmitLambda, tmp_path: Path, capsys
) -> None:
    run_id = submit(tmp_path, capsys)
    with_outputs(stack, run_id)

    assert main(["status", run_id, "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["counts"] == {"done": 1, "failed": 1, "running": 1, "pending": 1}
    assert status["job_name"] == f"wan-{run_id}" and status["job_status"]
    running = status["items"][1]
    assert (running["id"], running["step"], running["eta_s"], running["attempt"]) == ("p0001", 4, 3.0, 2)


def test_status_marks_a_dead_childs_items_failed(
    stack: FakeStack, submit_lambda: SubmitLambda, tmp_path: Path, capsys
) -> None:
    run_id = submit(tmp_path, capsys)
    stack.put_json(layout.child_error_key(run_id, 3), {"type": "SpecError", "message": "bad spec"})

    assert main(["status", run_id, "--json"]) == 0
    owl = json.loads(capsys.readouterr().out)["items"][3]
    assert (owl["id"], owl["state"], owl["error"]["type"]) == ("owl", "failed", "SpecError")


def test_status_of_an_unknown_run_exits_4(stack: FakeStack, capsys) -> None:
    assert main(["status", "nope-20250101T000000Z-00000000"]) == 4
    assert "no run 'nope-20250101T000000Z-00000000'" in capsys.readouterr().err


# --- fetch ---------------------------------------------------------------------------------------------


def test_fetch_downloads_videos_manifests_and_errors_then_skips_them(
    stack: FakeStack, submit_lambda: SubmitLambda, tmp_path: Path, capsys
) -> None:
    run_id = submit(tmp_path, capsys)
    with_outputs(stack, run_id)
    target = tmp_path / "videos"

    assert main(["fetch", run_id, str(target)]) == 0
    assert sorted(p.name for p in target.iterdir()) == [
        "p0000.manifest.json",
        "p0000.mp4",
        "p0002.error.json",
    ]
    assert (target / "p0000.mp4").read_bytes() == b"\x00mp4" * 100
    assert capsys.readouterr().out.splitlines() == [
        str(target / n) for n in ("p0000.manifest.json", "p0000.mp4", "p0002.error.json")
    ]

    assert main(["fetch", run_id, str(target)]) == 0
    captured = capsys.readouterr()
    assert (
        captured.out == f"{target / 'p0002.error.json'}\n"
    )  # error records may be rewritten: always fetched
    assert "2 already here" in captured.err


def test_fetch_defaults_to_a_folder_named_after_the_run(
    stack: FakeStack, submit_lambda: SubmitLambda, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_id = submit(tmp_path, capsys)
    monkeypatch.chdir(tmp_path)
    assert main(["fetch", run_id]) == 0
    assert "nothing to fetch yet" in capsys.readouterr().err
    with_outputs(stack, run_id)
    assert main(["fetch", run_id, "-q"]) == 0
    assert (tmp_path / run_id / "p0000.mp4").is_file()


def test_fetch_of_an_unknown_run_exits_4(stack: FakeStack, tmp_path: Path, capsys) -> None:
    assert main(["fetch", "nope", str(tmp_path / "x")]) == 4
    assert not (tmp_path / "x").exists()


# --- cancel --------------------------------------------------------------------------------------------


def test_cancel_terminates_the_job_and_records_unfinished_items(
    stack: FakeStack, submit_lambda: SubmitLambda, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_id = submit(tmp_path, capsys)
    with_outputs(stack, run_id)
    job_id = stack.get_json(layout.run_record_key(run_id))["job_id"]
    # moto's no-Docker jobs may have "finished" already, and terminating a finished job changes nothing
    # there: watch the API call itself.
    from botocore.client import BaseClient

    calls, real = [], BaseClient._make_api_call

    def spy(self, operation, params):
        calls.append((operation, params))
        return real(self, operation, params)

    monkeypatch.setattr(BaseClient, "_make_api_call", spy)

    assert main(["cancel", run_id, "--reason", "wrong prompts"]) == 0
    out = capsys.readouterr().out
    assert f"terminated Batch job {job_id}" in out
    assert "2 item(s) cancelled, 1 already done, 1 already failed" in out

    assert ("TerminateJob", {"jobId": job_id, "reason": "wrong prompts"}) in calls
    running = stack.get_json(layout.error_key(run_id, "p0001"))
    assert (running["type"], running["step"], running["attempt"]) == ("Cancelled", 4, 2)
    assert stack.get_json(layout.error_key(run_id, "owl"))["type"] == "Cancelled"
    # Never overwritten: the job's own record and the finished item stay as they were.
    assert stack.get_json(layout.error_key(run_id, "p0002"))["type"] == "OutOfMemoryError"
    assert layout.error_key(run_id, "p0000") not in stack.keys()

    assert main(["status", run_id, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["counts"] == {
        "done": 1,
        "failed": 3,
        "running": 0,
        "pending": 0,
    }


def test_cancel_of_an_unknown_run_exits_4(stack: FakeStack, capsys) -> None:
    assert main(["cancel", "nope"]) == 4
    assert "no run 'nope'" in capsys.readouterr().err


# --- warm ----------------------------------------------------------------------------------------------


def test_warm_submits_the_cache_fill_job(stack: FakeStack, capsys) -> None:
    assert main(["warm", "--revision", "abc123"]) == 0
    job_id = capsys.readouterr().out.strip()

    job = stack.batch.describe_jobs(jobs=[job_id])["jobs"][0]
    assert job["jobQueue"] == stack.cache_queue
    assert job["jobDefinition"] == stack.cache_definition
    assert job["jobName"] == "wan-warm-Wan-AI-Wan2-2-T2V-A14B-Diffusers"
    env = {pair["name"]: pair["value"] for pair in job["container"]["environment"]}
    assert env["WARM_MODEL"] == "Wan-AI/Wan2.2-T2V-A14B-Diffusers@abc123"


def test_warm_rejects_a_malformed_model(stack: FakeStack, capsys) -> None:
    assert main(["warm", "--model", "a b"]) == 2
    assert "--model must be non-empty" in capsys.readouterr().err


# --- every command ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["submit", "status", "fetch", "cancel", "warm", "run", "reproduce"])
def test_every_command_has_help_with_examples(command: str, capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    out = capsys.readouterr().out
    assert info.value.code == 0
    assert out.startswith(f"usage: wanbatch {command}") and "examples:\n  wanbatch " in out


def test_aws_refusing_is_exit_3_without_a_traceback(stack: FakeStack, capsys, monkeypatch) -> None:
    from botocore.exceptions import ClientError

    def refuse(*args, **kwargs):
        raise ClientError({"Error": {"Code": "AccessDenied", "Message": "not allowed"}}, "ListObjectsV2")

    monkeypatch.setattr("wanbatch.cli.status.run_status", refuse)
    assert main(["status", "any"]) == 3
    err = capsys.readouterr().err
    assert "AccessDenied" in err and "Traceback" not in err
