"""The fleet cold-start simulation: limits and trends, not hard-coded outputs."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from benchmarks import fleet_sim
from benchmarks.fleet_sim import Assumptions, first_fetch_gbps, packing_choice, simulate

A = Assumptions()


def test_the_model_is_about_70_gb():
    assert 65 < A.model_gb < 75


def test_the_efs_aggregate_cap_bites_at_large_fleets_only():
    assert first_fetch_gbps(A, "efs-direct", 1) == A.efs_client_gbps
    assert first_fetch_gbps(A, "efs-direct", 500) == pytest.approx(A.efs_aggregate_gbps / 500)
    ttfs = [simulate(A, n, "efs-direct", 1).time_to_first_step_s for n in fleet_sim.FLEET_SIZES]
    assert ttfs == sorted(ttfs) and ttfs[-1] > 10 * ttfs[0]


def test_s3_does_not_slow_down_with_the_fleet_until_its_request_ceiling():
    ttfs = {n: simulate(A, n, "s3-nvme", 4).time_to_first_step_s for n in fleet_sim.FLEET_SIZES}
    assert len(set(ttfs.values())) == 1
    huge = int(A.s3_aggregate_gbps / first_fetch_gbps(A, "s3-nvme", 1)) * 2
    assert first_fetch_gbps(A, "s3-nvme", huge) < first_fetch_gbps(A, "s3-nvme", 1)


def test_s3_has_no_per_gb_charge_and_efs_does():
    s3 = simulate(A, 100, "s3-nvme", 1)
    efs = simulate(A, 100, "efs-direct", 1)
    assert s3.transfer_usd_per_video * A.videos_per_instance < 0.01, "GET requests only: under a cent"
    assert efs.transfer_usd_per_video == pytest.approx(A.model_gb * A.efs_read_usd_per_gb)
    doubled = simulate(replace(A, expert_gib=2 * A.expert_gib), 100, "s3-nvme", 1)
    assert doubled.transfer_usd_per_video < 0.01 / A.videos_per_instance * 2


@pytest.mark.parametrize("source", fleet_sim.SOURCES)
def test_the_cost_share_falls_as_items_per_job_grow(source: str):
    shares = [simulate(A, 100, source, k).load_cost_share for k in (1, 2, 4, 8, 16)]
    assert shares == sorted(shares, reverse=True) and shares[0] > shares[-1]


def test_the_nvme_tier_pays_efs_once_per_instance():
    direct, tier = simulate(A, 10, "efs-direct", 1), simulate(A, 10, "efs-nvme", 1)
    assert tier.transfer_usd_per_video == pytest.approx(direct.transfer_usd_per_video / A.videos_per_instance)


def test_the_recommended_configuration_meets_the_5_percent_target_at_100_instances():
    k = packing_choice(A, 100)
    assert 1 <= k <= A.videos_per_instance
    assert simulate(A, 100, fleet_sim.RECOMMENDED_SOURCE, k).load_cost_share <= 0.05
    assert simulate(A, 100, "efs-direct", k).load_cost_share > 0.05, "the problem the issue describes"


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="source"):
        simulate(A, 10, "ftp", 1)
    with pytest.raises(ValueError, match="instances"):
        simulate(A, 0, "s3-nvme", 1)
    with pytest.raises(ValueError, match="items per job"):
        simulate(A, 10, "s3-nvme", 0)


def test_main_prints_the_table_and_merges_its_keys(tmp_path, monkeypatch, capsys):
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"warm_load_gbps": 7.9, "other": 1}))
    monkeypatch.setenv("BENCH_RESULTS", str(results))
    assert fleet_sim.main([]) == 0
    out = capsys.readouterr().out
    per_source = len({*fleet_sim.ITEMS_PER_JOB, packing_choice(A, 500)})
    assert out.count("| 500 |") == len(fleet_sim.SOURCES) * per_source
    merged = json.loads(results.read_text())
    assert merged["other"] == 1 and merged["warm_load_gbps"] == 7.9
    assert 0 < merged["load_cost_share_100_instances"] <= 0.05
    assert set(merged["load_cost_share_100_instances_by_source"]) == set(fleet_sim.SOURCES)
    assert (tmp_path / "fleet_sim.json").is_file()
