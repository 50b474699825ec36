"""The submit Lambda, called directly under moto (S3, Batch without Docker, DynamoDB)."""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from unittest import mock

import pytest

from tests.conftest import load_event
from tests.lambdas.conftest import BUCKET, QUEUE, TABLE, FakeAws, eventbridge_event, s3_event

KEY = "prompts/holiday clips/café à Paris.json"
GOOD = json.dumps(
    {"defaults": {"size": "832*480", "steps": 30}, "prompts": ["A lake at sunset", "A cat, realistic"]}
)


def call(event: dict, lambda_context) -> dict:
    from lambdas.submit.handler import handler

    return handler(event, lambda_context)


def test_sample_event_key_is_url_encoded_and_decoded(lambda_context) -> None:
    from lambdas.submit.events import triggers_from_event

    [trigger] = triggers_from_event(load_event("s3_put.json"))
    assert trigger.key == KEY  # '+' -> space, %C3%A9 -> é
    assert trigger.sequencer == "0055AED6DCD90281E5"


def test_s3_put_submits_one_job_with_spec_and_run_record(aws: FakeAws, lambda_context, capsys) -> None:
    etag = aws.put(KEY, GOOD)
    result = call(s3_event(KEY, etag), lambda_context)

    [outcome] = result["outcomes"]
    assert outcome["status"] == "submitted" and outcome["prompts"] == 2
    run_id = outcome["run_id"]
    assert re.fullmatch(r"cafe-a-paris-20260314T150926Z-[0-9a-f]{8}", run_id)
    [job] = aws.jobs()
    assert job["jobName"] == f"wan-{run_id}"
    assert re.fullmatch(r"[A-Za-z0-9_-]{1,128}", job["jobName"])  # Batch's job-name rule
    described = aws.batch.describe_jobs(jobs=[job["jobId"]])["jobs"][0]
    env = {pair["name"]: pair["value"] for pair in described["container"]["environment"]}
    assert env["SPEC_URI"] == f"s3://{BUCKET}/runs/{run_id}/spec.json"
    assert described["arrayProperties"]["size"] == 2

    spec = aws.get_json(f"runs/{run_id}/spec.json")
    assert spec["source"] == {"bucket": BUCKET, "key": KEY, "etag": etag}
    assert spec["model"] == {"id": "Wan-AI/Wan2.2-T2V-A14B-Diffusers", "revision": "deadbeef"}
    assert [item["id"] for item in spec["items"]] == ["p0000", "p0001"]
    assert spec["items"][0]["width"] == 832 and spec["items"][0]["steps"] == 30
    run = aws.get_json(f"runs/{run_id}/run.json")
    assert run["job_id"] == job["jobId"] and run["job_name"] == job["jobName"]
    assert (run["item_count"], run["items_per_job"], run["children"]) == (2, 1, 2)
    assert run["source"]["etag"] == etag and run["submitted_at"].endswith("Z")
    assert (run["trigger"], run["event_time"]) == ("upload", "2026-03-14T15:09:26Z")

    emf = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"_aws"' in line]
    assert emf[-1]["FilesAccepted"] == [1.0] and emf[-1]["PromptsSubmitted"] == [2.0]


def test_single_item_is_a_plain_job_not_an_array(aws: FakeAws, lambda_context) -> None:
    etag = aws.put("prompts/one.jsonl", '"just one"\n')
    call(s3_event("prompts/one.jsonl", etag), lambda_context)
    [job] = aws.jobs()
    described = aws.batch.describe_jobs(jobs=[job["jobId"]])["jobs"][0]
    assert "size" not in (described.get("arrayProperties") or {})


def test_eventbridge_object_created_shape_raw_key(aws: FakeAws, lambda_context) -> None:
    key = "prompts/a+b 100%.json"  # raw in EventBridge: '+' and '%' must survive
    etag = aws.put(key, GOOD)
    [outcome] = call(eventbridge_event(key, etag), lambda_context)["outcomes"]
    assert outcome["status"] == "submitted" and outcome["key"] == key
    assert len(aws.jobs()) == 1


def test_redelivered_event_submits_nothing_new(aws: FakeAws, lambda_context, capsys) -> None:
    etag = aws.put(KEY, GOOD)
    first = call(s3_event(KEY, etag), lambda_context)["outcomes"][0]
    second = call(s3_event(KEY, etag), lambda_context)["outcomes"][0]
    assert second["status"] == "duplicate"
    assert second["run_id"] == first["run_id"] and second["job_id"] == first["job_id"]
    assert len(aws.jobs()) == 1
    emf = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"_aws"' in line]
    assert emf[-1]["DuplicateDeliveries"] == [1.0] and "FilesAccepted" not in emf[-1]


def test_redelivery_after_idempotency_record_expired_submits_nothing(aws: FakeAws, lambda_context) -> None:
    etag = aws.put(KEY, GOOD)
    first = call(s3_event(KEY, etag), lambda_context)["outcomes"][0]
    [record] = aws.dynamodb.scan(TableName=TABLE)["Items"]
    # The idempotency key is the run_id: powertools' md5 of its JSON, under our stable prefix.
    digest = hashlib.md5(json.dumps(first["run_id"]).encode()).hexdigest()
    assert record["id"]["S"] == f"wanbatch-submit#{digest}" and record["status"]["S"] == "COMPLETED"
    for item in aws.dynamodb.scan(TableName=TABLE)["Items"]:  # as if its TTL had passed
        aws.dynamodb.delete_item(TableName=TABLE, Key={"id": item["id"]})
    again = call(s3_event(KEY, etag), lambda_context)["outcomes"][0]
    assert again["status"] == "duplicate" and again["job_id"] == first["job_id"]
    assert len(aws.jobs()) == 1


@contextmanager
def atomic_conditional_writes() -> Iterator[None]:
    """DynamoDB checks a put's condition and writes atomically; moto checks, then writes, and a thread switch
    in between lets two conditional puts both succeed. Serialise moto's writes so the fake keeps the real
    guarantee that powertools idempotency relies on."""
    from moto.dynamodb.models import DynamoDBBackend

    lock = threading.Lock()
    real_put, real_update = DynamoDBBackend.put_item, DynamoDBBackend.update_item

    def locked(method):
        def call(self, *args, **kwargs):
            with lock:
                return method(self, *args, **kwargs)

        return call

    with mock.patch.object(DynamoDBBackend, "put_item", locked(real_put)), \
            mock.patch.object(DynamoDBBackend, "update_item", locked(real_update)):
        yield


def test_concurrent_double_delivery_submits_one_job(aws: FakeAws, lambda_context) -> None:
    from aws_lambda_powertools.utilities.idempotency.exceptions import IdempotencyAlreadyInProgressError

    from lambdas.submit import submit

    etag = aws.put(KEY, GOOD)
    event = s3_event(KEY, etag)
    barrier = threading.Barrier(2)
    real_find = submit.find_job
    results, errors = [], []

    def slow_find(*args, **kwargs):
        time.sleep(0.3)  # hold the first call inside the protected section while the second arrives
        return real_find(*args, **kwargs)

    def deliver() -> None:
        barrier.wait()
        try:
            results.append(call(event, lambda_context))
        except IdempotencyAlreadyInProgressError as exc:
            errors.append(exc)

    with mock.patch.object(submit, "find_job", slow_find), atomic_conditional_writes():
        threads = [threading.Thread(target=deliver) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    assert len(aws.jobs()) == 1
    assert len(results) + len(errors) == 2 and results  # the loser fails and Lambda retries it later
    # The retry of the losing delivery finds the stored result.
    assert call(event, lambda_context)["outcomes"][0]["status"] == "duplicate"


def test_crash_after_submit_then_redelivery_reuses_the_job(aws: FakeAws, lambda_context) -> None:
    from lambdas.submit import submit

    etag = aws.put(KEY, GOOD)
    event = s3_event(KEY, etag)
    real_put = submit._put_json

    def crash_on_run_record(s3, bucket, key, body):
        if key.endswith("/run.json"):
            raise RuntimeError("Lambda died before writing run.json")
        real_put(s3, bucket, key, body)

    with mock.patch.object(submit, "_put_json", crash_on_run_record), pytest.raises(RuntimeError):
        call(event, lambda_context)
    [job] = aws.jobs()  # spec written and job submitted, run.json missing

    [outcome] = call(event, lambda_context)["outcomes"]
    assert outcome["status"] == "submitted" and outcome["job_id"] == job["jobId"]
    assert len(aws.jobs()) == 1
    assert aws.get_json(f"runs/{outcome['run_id']}/run.json")["job_id"] == job["jobId"]


def test_crash_before_submit_then_redelivery_submits_once(aws: FakeAws, lambda_context) -> None:
    from lambdas.submit import submit

    etag = aws.put(KEY, GOOD)
    event = s3_event(KEY, etag)
    with (
        mock.patch.object(submit, "submit_job", side_effect=RuntimeError("throttled")),
        pytest.raises(RuntimeError),
    ):
        call(event, lambda_context)
    assert aws.jobs() == [] and any(key.endswith("/spec.json") for key in aws.keys("runs/"))

    call(event, lambda_context)
    call(event, lambda_context)
    assert len(aws.jobs()) == 1


def test_invalid_file_submits_nothing_and_writes_rejection(aws: FakeAws, lambda_context, capsys) -> None:
    body = json.dumps({"prompts": ["ok", {"prompt": "x", "stepz": 3}, {"id": "a/b", "prompt": " "}]})
    etag = aws.put(KEY, body)
    [outcome] = call(s3_event(KEY, etag), lambda_context)["outcomes"]

    assert outcome["status"] == "rejected"
    assert aws.jobs() == [] and aws.keys("runs/") == []
    record = aws.get_json(f"rejected/{KEY}.error.json")
    assert record["error_count"] == 3 == len(record["errors"])
    assert record["messages"] == outcome["errors"]
    assert outcome["error_count"] == 3
    assert record["errors"][0] == {
        "index": 1,
        "id": "p0001",
        "field": "stepz",
        "message": "unknown field; did you mean 'steps'?",
    }
    assert record["source"]["etag"] == etag
    emf = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"_aws"' in line]
    assert emf[-1]["FilesRejected"] == [1.0]


def test_gpus_not_offered_is_rejected(aws: FakeAws, lambda_context, monkeypatch) -> None:
    monkeypatch.setenv("GPU_JOB_DEFINITIONS", json.dumps({"2": aws.job_definition_arn}))
    etag = aws.put("prompts/big.json", json.dumps({"gpus": 4, "prompts": ["x"]}))
    [outcome] = call(s3_event("prompts/big.json", etag), lambda_context)["outcomes"]
    assert outcome["errors"] == ["field 'gpus': this deployment offers gpus 1, 2; got 4"]
    assert aws.jobs() == []


def test_gpus_offered_uses_its_job_definition(aws: FakeAws, lambda_context, monkeypatch) -> None:
    two_gpu = aws.batch.register_job_definition(
        jobDefinitionName="wan-job-2gpu",
        type="container",
        containerProperties={"image": "wanbatch:test", "vcpus": 16, "memory": 120000},
    )["jobDefinitionArn"]
    monkeypatch.setenv("GPU_JOB_DEFINITIONS", json.dumps({"2": two_gpu}))
    etag = aws.put("prompts/big.json", json.dumps({"gpus": 2, "prompts": ["x", "y"]}))
    call(s3_event("prompts/big.json", etag), lambda_context)
    [job] = aws.jobs()
    assert aws.batch.describe_jobs(jobs=[job["jobId"]])["jobs"][0]["jobDefinition"] == two_gpu


def test_overwritten_object_is_not_run_under_the_old_event(aws: FakeAws, lambda_context) -> None:
    old_etag = aws.put(KEY, GOOD)
    aws.put(KEY, json.dumps(["something else"]))
    [outcome] = call(s3_event(KEY, old_etag), lambda_context)["outcomes"]
    assert outcome["status"] == "ignored" and aws.jobs() == []


def test_keys_outside_prompts_are_ignored(aws: FakeAws, lambda_context) -> None:
    etag = aws.put("schedules/nightly.json", GOOD)
    [outcome] = call(s3_event("schedules/nightly.json", etag), lambda_context)["outcomes"]
    assert outcome["status"] == "ignored" and aws.jobs() == []


def test_scheduled_event_makes_a_run_per_firing(aws: FakeAws, lambda_context) -> None:
    aws.put("schedules/nightly.json", GOOD)
    event = load_event("schedule.json")
    [first] = call(event, lambda_context)["outcomes"]
    assert first["status"] == "submitted"
    assert first["run_id"].startswith("nightly-20260315T020000Z-")
    run = aws.get_json(f"runs/{first['run_id']}/run.json")
    assert (run["trigger"], run["event_time"]) == ("schedule", "2026-03-15T02:00:00Z")
    [again] = call(event, lambda_context)["outcomes"]  # the same firing redelivered
    assert again["status"] == "duplicate"
    [next_day] = call({**event, "time": "2026-03-16T02:00:00Z"}, lambda_context)["outcomes"]
    assert next_day["run_id"].startswith("nightly-20260316T020000Z-")
    assert len(aws.jobs()) == 2


def test_ten_thousand_prompts_one_submit_job(aws: FakeAws, lambda_context, capsys) -> None:
    from lambdas.submit import submit

    body = json.dumps({"prompts": [f"A red fox number {i} runs through snow" for i in range(10_000)]})
    etag = aws.put("prompts/big.json", body)
    with mock.patch.object(submit, "submit_job", wraps=submit.submit_job) as submitted:
        started = time.perf_counter()
        [outcome] = call(s3_event("prompts/big.json", etag), lambda_context)["outcomes"]
        elapsed = time.perf_counter() - started

    assert submitted.call_count == 1 and outcome["prompts"] == 10_000
    [job] = aws.jobs()
    assert aws.batch.describe_jobs(jobs=[job["jobId"]])["jobs"][0]["arrayProperties"]["size"] == 10_000
    with capsys.disabled():
        print(f"\n10,000-prompt file: handler took {elapsed:.2f} s (moto, this machine)")


def test_auto_items_per_job_packs_480p_items(aws: FakeAws, lambda_context, monkeypatch) -> None:
    monkeypatch.setenv("ITEMS_PER_JOB", "auto")
    body = json.dumps({"defaults": {"size": "832*480"}, "prompts": [f"p {i}" for i in range(100)]})
    etag = aws.put("prompts/many.json", body)
    [outcome] = call(s3_event("prompts/many.json", etag), lambda_context)["outcomes"]
    run = aws.get_json(f"runs/{outcome['run_id']}/run.json")
    # 480p, 40 steps: ~710 s an item -> 4 fit in 60 min after the load; the fleet (64/8 = 8 slots) allows 12.
    assert (run["items_per_job"], run["children"]) == (4, 25)
    [job] = aws.jobs()
    assert aws.batch.describe_jobs(jobs=[job["jobId"]])["jobs"][0]["arrayProperties"]["size"] == 25


def test_unsupported_event_is_an_error(lambda_context) -> None:
    from lambdas.submit.events import UnsupportedEvent

    with pytest.raises(UnsupportedEvent):
        call({"hello": "world"}, lambda_context)


def test_queue_name_is_what_the_lambda_uses(aws: FakeAws) -> None:
    from lambdas.submit.settings import SubmitSettings

    assert SubmitSettings.from_env().job_queue == QUEUE
