"""The submit Lambda's settings, event shapes and fleet sizing."""

from __future__ import annotations

import copy
from datetime import UTC, datetime

import pytest

from lambdas.submit.events import Trigger, UnsupportedEvent, triggers_from_event
from lambdas.submit.settings import SubmitSettings
from tests.conftest import load_event
from tests.lambdas.conftest import MAX_VCPUS, QUEUE, FakeAws
from wanbatch.errors import ConfigError

BASE = {"JOB_QUEUE": "q", "JOB_DEFINITION": "jd", "IDEMPOTENCY_TABLE": "t"}


def test_settings_defaults() -> None:
    settings = SubmitSettings.from_env(BASE)
    assert settings.items_per_job == 1 and settings.max_job_minutes == 60.0
    assert settings.model.id == "Wan-AI/Wan2.2-T2V-A14B-Diffusers" and settings.model.revision == "main"
    assert settings.offered_gpus == [1] and settings.job_definition_for(1) == "jd"
    assert settings.job_definition_for(2) is None


def test_settings_auto_explicit_and_gpu_definitions() -> None:
    env = BASE | {
        "ITEMS_PER_JOB": "auto",
        "MAX_JOB_MINUTES": "90",
        "GPU_JOB_DEFINITIONS": '{"2": "jd2", "4": "jd4"}',
    }
    settings = SubmitSettings.from_env(env)
    assert settings.items_per_job is None and settings.max_job_minutes == 90.0
    assert settings.offered_gpus == [1, 2, 4] and settings.job_definition_for(4) == "jd4"
    assert SubmitSettings.from_env(BASE | {"ITEMS_PER_JOB": "3"}).items_per_job == 3


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"JOB_QUEUE": ""}, "environment variable JOB_QUEUE is not set"),
        ({"ITEMS_PER_JOB": "0"}, "ITEMS_PER_JOB must be 'auto' or a positive integer, got '0'"),
        ({"ITEMS_PER_JOB": "many"}, "ITEMS_PER_JOB must be 'auto' or a positive integer, got 'many'"),
        ({"MAX_JOB_MINUTES": "-5"}, "MAX_JOB_MINUTES must be a positive number, got '-5'"),
        ({"MAX_JOB_MINUTES": "soon"}, "MAX_JOB_MINUTES must be a positive number, got 'soon'"),
        ({"GPU_JOB_DEFINITIONS": "{"}, "GPU_JOB_DEFINITIONS is not JSON"),
        ({"GPU_JOB_DEFINITIONS": '{"two": "jd"}'}, "GPU_JOB_DEFINITIONS must be a JSON object"),
    ],
)
def test_bad_settings_are_clear_errors(env: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("{", r"\{")):
        SubmitSettings.from_env(BASE | env)


def test_s3_notification_key_decoding() -> None:
    event = copy.deepcopy(load_event("s3_put.json"))
    event["Records"][0]["s3"]["object"]["key"] = "prompts/a%2Bb+c%25d+%E6%97%A5%E6%9C%AC.json"
    [trigger] = triggers_from_event(event)
    assert trigger.key == "prompts/a+b c%d 日本.json"
    assert trigger.time == datetime(2026, 3, 14, 15, 9, 26, 535000, tzinfo=UTC)


def test_non_create_records_are_skipped() -> None:
    event = copy.deepcopy(load_event("s3_put.json"))
    event["Records"][0]["eventName"] = "ObjectRemoved:Delete"
    assert triggers_from_event(event) == []


def test_eventbridge_key_is_taken_as_is() -> None:
    [trigger] = triggers_from_event(load_event("s3_eventbridge_object_created.json"))
    assert trigger == Trigger(
        bucket="wan-bucket",
        key="prompts/holiday clips/café à Paris.json",
        time=datetime(2026, 3, 14, 15, 9, 27, tzinfo=UTC),
        etag="b1946ac92492d2347c6235b4d2611184",
        version_id="IYV3p45BT0ac8hjHg1houSdS1a.Mro8e",
        sequencer="617f08299329d189",
    )


def test_schedule_payload_needs_a_bucket_and_key() -> None:
    [trigger] = triggers_from_event(load_event("schedule.json"), default_bucket="b")
    assert trigger.scheduled and trigger.bucket == "b" and trigger.key == "schedules/nightly.json"
    with pytest.raises(UnsupportedEvent, match="needs 'key'"):
        triggers_from_event(load_event("schedule.json"))
    with pytest.raises(UnsupportedEvent, match="ISO-8601"):
        triggers_from_event(
            {**load_event("schedule.json"), "time": "<aws.scheduler.scheduled-time>"}, default_bucket="b"
        )


@pytest.mark.parametrize("event", [{"Records": [{"eventName": "ObjectCreated:Put"}]}, [], {"source": "x"}])
def test_malformed_events_are_unsupported(event: object) -> None:
    with pytest.raises(UnsupportedEvent):
        triggers_from_event(event)  # type: ignore[arg-type]


def test_parallel_slots_from_the_queue(aws: FakeAws) -> None:
    from lambdas.submit.fleet import FALLBACK_SLOTS, parallel_slots

    assert parallel_slots(aws.batch, job_queue=QUEUE, job_definition="wan-job") == MAX_VCPUS // 8
    assert parallel_slots(aws.batch, job_queue="no-such-queue", job_definition="wan-job") == FALLBACK_SLOTS
