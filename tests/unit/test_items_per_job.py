"""items_per_job selection (issue 9 item 2): amortise the load, stay under the time limit, fill the fleet."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wanbatch.packing import MODEL_LOAD_SECONDS, choose_items_per_job, estimate_item_seconds, items_per_job
from wanbatch.spec import SpecItem


def item(
    width: int = 832, height: int = 480, *, frames: int = 81, steps: int = 40, guidance: float = 4.0
) -> SpecItem:
    return SpecItem(
        id="a",
        prompt="p",
        negative_prompt="",
        seed=1,
        width=width,
        height=height,
        num_frames=frames,
        fps=16,
        steps=steps,
        guidance_scale=guidance,
        guidance_scale_2=guidance,
        flow_shift=12.0,
    )


def test_estimates_follow_the_table() -> None:
    assert estimate_item_seconds(item(832, 480)) == 17.0 * 40 + 30.0
    assert estimate_item_seconds(item(1280, 720)) == 60.0 * 40 + 90.0
    assert estimate_item_seconds(item(steps=20)) < estimate_item_seconds(item(steps=40))
    assert estimate_item_seconds(item(frames=41)) < estimate_item_seconds(item(frames=81))
    assert estimate_item_seconds(item(guidance=1.0)) < estimate_item_seconds(
        item(guidance=4.0)
    )  # no CFG pass


def test_720p_items_are_one_per_job_under_an_hour() -> None:
    # ~41.5 min an item: a second one would pass 60 minutes.
    assert choose_items_per_job([item(1280, 720)] * 100, max_job_minutes=60, parallel_slots=8) == 1


def test_480p_items_are_packed_until_the_time_limit() -> None:
    # ~11.8 min an item: (60 min - 2 min load) fits 4.
    assert choose_items_per_job([item()] * 1000, max_job_minutes=60, parallel_slots=8) == 4
    assert choose_items_per_job([item()] * 1000, max_job_minutes=120, parallel_slots=8) == 9


def test_fleet_rule_keeps_every_gpu_busy() -> None:
    # 16 quick items, 8 GPUs: time would allow 4 per job, the fleet wants >= 8 children -> 2 each.
    assert items_per_job(16, est_seconds_per_item=600, max_job_minutes=60, parallel_slots=8) == 2
    # Fewer items than GPUs: one item each.
    assert items_per_job(5, est_seconds_per_item=60, max_job_minutes=60, parallel_slots=8) == 1


def test_slowest_item_sizes_the_run() -> None:
    mixed = [item()] * 99 + [item(1280, 720)]
    assert choose_items_per_job(mixed, max_job_minutes=60, parallel_slots=8) == 1


def test_chunks_are_even() -> None:
    # Time allows 4 per job for 9 items on one GPU: 3 children of 3 rather than 4 + 4 + 1.
    assert items_per_job(9, est_seconds_per_item=800, max_job_minutes=60, parallel_slots=1) == 3


def test_an_item_longer_than_the_limit_still_gets_a_job() -> None:
    assert items_per_job(3, est_seconds_per_item=10_000, max_job_minutes=60, parallel_slots=1) == 1


@pytest.mark.parametrize("bad", [{"n_items": 0}, {"est_seconds_per_item": 0}, {"max_job_minutes": -1}])
def test_bad_arguments_are_errors(bad: dict) -> None:
    args = {"n_items": 3, "est_seconds_per_item": 60.0, "max_job_minutes": 60.0, "parallel_slots": 1} | bad
    n_items = args.pop("n_items")
    with pytest.raises(ValueError):
        items_per_job(n_items, **args)


@given(st.integers(1, 10_000), st.floats(1, 20_000), st.floats(1, 600), st.integers(1, 1000))
def test_rule_invariants(n: int, seconds: float, minutes: float, slots: int) -> None:
    k = items_per_job(n, est_seconds_per_item=seconds, max_job_minutes=minutes, parallel_slots=slots)
    children = math.ceil(n / k)
    assert 1 <= k <= n
    assert children >= min(n, slots)  # never fewer children than GPUs to fill
    if k > 1:  # packed only when the whole child fits the limit
        assert MODEL_LOAD_SECONDS + k * seconds <= minutes * 60
