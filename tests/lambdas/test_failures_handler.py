"""The failure recorder, called directly with real-shaped Batch "Job State Change" events under moto."""

from __future__ import annotations

import copy
import json

from tests.conftest import load_event
from tests.lambdas.conftest import BUCKET, FakeAws
from wanbatch import layout
from wanbatch.spec import RunSpec, Source, SpecItem

RUN_ID = "cafe-a-paris-20260314T150926Z-1a2b3c4d"  # the sample events' job is wan-<RUN_ID>


def write_spec(aws: FakeAws, n_items: int, items_per_job: int) -> RunSpec:
    items = [
        SpecItem(
            id=f"p{i:04d}",
            prompt=f"prompt {i}",
            negative_prompt="",
            seed=i,
            width=832,
            height=480,
            num_frames=81,
            fps=16,
            steps=40,
            guidance_scale=4.0,
            guidance_scale_2=3.0,
            flow_shift=12.0,
        )
        for i in range(n_items)
    ]
    spec = RunSpec(
        run_id=RUN_ID,
        source=Source(bucket=BUCKET, key="prompts/x.json"),
        model={"id": "Wan-AI/Wan2.2-T2V-A14B-Diffusers", "revision": "main"},
        items_per_job=items_per_job,
        items=items,
    )
    aws.s3.put_object(Bucket=BUCKET, Key=layout.spec_key(RUN_ID), Body=spec.model_dump_json())
    return spec


def call(event: dict, lambda_context) -> dict:
    from lambdas.failures.handler import handler

    return handler(event, lambda_context)


def error_keys(aws: FakeAws) -> list[str]:
    return [key for key in aws.keys(layout.run_prefix(RUN_ID)) if key.endswith(".error.json")]


def test_failed_child_gets_error_records_for_its_items_only(aws: FakeAws, lambda_context, capsys) -> None:
    write_spec(aws, n_items=6, items_per_job=2)  # child 1 renders p0002, p0003
    # p0002 finished before the container died; nothing is known about p0003.
    aws.s3.put_object(Bucket=BUCKET, Key=layout.manifest_key(RUN_ID, "p0002"), Body=b"{}")

    result = call(load_event("batch_job_failed.json"), lambda_context)

    assert result["written"] == [layout.error_key(RUN_ID, "p0003")]
    assert error_keys(aws) == [layout.error_key(RUN_ID, "p0003")]
    record = aws.get_json(layout.error_key(RUN_ID, "p0003"))
    assert record["type"] == "BatchJobFailed" and record["attempt"] == 2 and record["exit_code"] == 137
    assert record["message"].startswith("Batch job 4c7599ae-0a82-49aa-ba5a-4727fcce14a8:1 failed: Essential")
    assert (record["run_id"], record["item_id"], record["step"]) == (RUN_ID, "p0003", None)
    emf = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"_aws"' in line]
    assert emf[-1]["ErrorRecordsWritten"] == [1.0]


def test_existing_error_record_from_the_job_is_kept(aws: FakeAws, lambda_context) -> None:
    write_spec(aws, n_items=4, items_per_job=2)
    job_record = b'{"type": "OutOfMemoryError", "step": 12}'
    aws.s3.put_object(Bucket=BUCKET, Key=layout.error_key(RUN_ID, "p0002"), Body=job_record)

    result = call(load_event("batch_job_failed.json"), lambda_context)

    assert result["written"] == [layout.error_key(RUN_ID, "p0003")]
    assert (
        aws.s3.get_object(Bucket=BUCKET, Key=layout.error_key(RUN_ID, "p0002"))["Body"].read() == job_record
    )


def test_failed_parent_covers_every_unfinished_item(aws: FakeAws, lambda_context) -> None:
    write_spec(aws, n_items=3, items_per_job=1)
    aws.s3.put_object(Bucket=BUCKET, Key=layout.manifest_key(RUN_ID, "p0000"), Body=b"{}")
    aws.s3.put_object(Bucket=BUCKET, Key=layout.video_key(RUN_ID, "p0000"), Body=b"mp4")

    result = call(load_event("batch_job_failed_parent.json"), lambda_context)

    assert sorted(result["written"]) == [layout.error_key(RUN_ID, "p0001"), layout.error_key(RUN_ID, "p0002")]
    assert layout.error_key(RUN_ID, "p0000") not in aws.keys()


def test_redelivered_failure_event_writes_nothing_more(aws: FakeAws, lambda_context) -> None:
    write_spec(aws, n_items=4, items_per_job=2)
    call(load_event("batch_job_failed.json"), lambda_context)
    before = aws.keys()
    assert call(load_event("batch_job_failed.json"), lambda_context)["written"] == []
    assert aws.keys() == before


def test_spec_found_through_bucket_when_environment_lacks_spec_uri(aws: FakeAws, lambda_context) -> None:
    write_spec(aws, n_items=2, items_per_job=1)
    event = copy.deepcopy(load_event("batch_job_failed.json"))
    event["detail"]["container"]["environment"] = []
    event["detail"]["arrayProperties"] = {"index": 0}
    assert call(event, lambda_context)["written"] == [layout.error_key(RUN_ID, "p0000")]


def test_other_jobs_and_statuses_are_ignored(aws: FakeAws, lambda_context) -> None:
    write_spec(aws, n_items=2, items_per_job=1)
    other = copy.deepcopy(load_event("batch_job_failed.json"))
    other["detail"]["jobName"] = "someone-elses-job"
    succeeded = copy.deepcopy(load_event("batch_job_failed.json"))
    succeeded["detail"]["status"] = "SUCCEEDED"
    assert call(other, lambda_context)["written"] == []
    assert call(succeeded, lambda_context)["written"] == []
    assert error_keys(aws) == []
