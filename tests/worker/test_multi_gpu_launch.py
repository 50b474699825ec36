"""The multi-GPU launch contract without the model: rank env, the launcher's exit codes, signal forwarding,
torchrun's own mapping (why the worker launches its ranks itself), context-parallel degrees."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from worker import distributed
from worker.distributed import Launch, ReadOnlyStorage, job_exit_code, parallel_degrees, run_ranks
from worker.storage import LocalStorage

from wanbatch.errors import SpecError

REPO = Path(__file__).resolve().parents[2]

# A stand-in rank: exits with CODE_<rank> after DELAY_<rank> seconds (or never, "wait"); 75 on SIGTERM,
# as the worker does when interrupted.
FAKE_RANK = textwrap.dedent(
    """
    import os, signal, sys, time
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(75))
    rank = os.environ["RANK"]
    assert os.environ["WORLD_SIZE"] == "2" and os.environ["LOCAL_RANK"] == rank and os.environ["MASTER_PORT"]
    print("ready", flush=True)
    code = os.environ.get("CODE_" + rank, "0")
    if code == "wait":
        while True:
            time.sleep(0.05)
    time.sleep(float(os.environ.get("DELAY_" + rank, "0")))
    sys.exit(int(code))
    """
)


@pytest.fixture
def fake_rank(tmp_path: Path) -> list[str]:
    script = tmp_path / "fake_rank.py"
    script.write_text(FAKE_RANK)
    return [sys.executable, str(script)]


@pytest.mark.parametrize(
    ("behaviour", "expected"),
    [
        ({"CODE_0": "0", "CODE_1": "0"}, 0),
        ({"CODE_0": "75", "CODE_1": "wait"}, 75),  # rank 0 interrupted: the waiting rank is stopped
        ({"CODE_0": "64", "CODE_1": "wait"}, 64),
        ({"CODE_0": "1", "CODE_1": "wait"}, 1),
        ({"CODE_0": "wait", "CODE_1": "1"}, 1),  # another rank failed: rank 0 is stopped, the failure counts
        ({"CODE_0": "wait", "CODE_1": "75"}, 75),
        ({"CODE_0": "0", "CODE_1": "1", "DELAY_1": "0.3"}, 0),  # rank 0 finished its outputs first
    ],
)
def test_the_launcher_returns_rank_zeros_exit_code(fake_rank, behaviour, expected):
    env = {**os.environ, **behaviour}
    started = time.monotonic()
    assert run_ranks(2, env=env, argv=fake_rank, grace_s=5.0, poll_s=0.02) == expected
    assert time.monotonic() - started < 5.0  # nobody waited for the grace to run out


def test_a_rank_that_ignores_sigterm_is_killed_after_the_grace(tmp_path):
    script = tmp_path / "stubborn.py"
    script.write_text(
        "import os, signal, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "if os.environ['RANK'] == '0': sys.exit(75)\n"
        "time.sleep(60)\n"
    )
    started = time.monotonic()
    assert run_ranks(2, argv=[sys.executable, str(script)], grace_s=0.5, poll_s=0.02) == 75
    assert time.monotonic() - started < 10


def test_sigterm_to_the_launcher_reaches_every_rank_and_the_job_exits_75(fake_rank, tmp_path):
    launcher = subprocess.Popen(
        [sys.executable, "-c",
         f"import sys; from worker.distributed import run_ranks; sys.exit(run_ranks(2, argv={fake_rank!r}))"],
        env={**os.environ, "CODE_0": "wait", "CODE_1": "wait",
             "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'batch_image'}"},
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    seen = ""
    # Both ranks have installed their SIGTERM handler. Counted in the whole output, not per line: with
    # PYTHONUNBUFFERED the two ranks' "ready" and "\n" are separate writes and can interleave.
    while seen.count("ready") < 2:
        line = launcher.stdout.readline()
        assert line, f"the launcher's output ended before both ranks were ready: {seen!r}"
        seen += line
    launcher.send_signal(signal.SIGTERM)
    assert launcher.wait(timeout=20) == 75
    assert '"exit_codes": [75, 75]' in launcher.stdout.read()


def test_torchrun_reports_1_when_a_rank_exits_75(tmp_path):
    """Why the worker launches its own ranks: under torchrun, Batch would see 1 (not retried) for a 75."""
    script = tmp_path / "rank.py"
    script.write_text("import os, sys\nsys.exit(75 if os.environ['RANK'] == '0' else 0)\n")
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "--monitor_interval", "0.1", str(script)],
        capture_output=True,
        timeout=60,
    )  # fmt: skip
    assert done.returncode == 1


@pytest.mark.parametrize(
    ("codes", "stopped", "first", "expected"),
    [
        ([0, 0], set(), None, 0),
        ([75, -15], {1}, None, 75),
        ([-15, 64], {0}, 1, 64),
        ([-9, 0], set(), 0, 1),  # rank 0 killed by the OOM killer: a plain failure
        ([3, 0], set(), 0, 1),  # outside the contract: a plain failure
    ],
)
def test_job_exit_code_table(codes, stopped, first, expected):
    assert job_exit_code(codes, stopped_by_launcher=stopped, first_failure=first) == expected


def test_launch_from_env():
    assert Launch.from_env({}) == Launch()
    launch = Launch.from_env({"WORLD_SIZE": "4", "RANK": "2", "LOCAL_RANK": "2"})
    assert (launch.world_size, launch.rank, launch.is_writer, launch.distributed) == (4, 2, False, True)
    assert Launch.from_env({"WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "0"}).launched
    with pytest.raises(SpecError, match="all of"):
        Launch.from_env({"WORLD_SIZE": "2"})
    with pytest.raises(SpecError, match="inconsistent"):
        Launch.from_env({"WORLD_SIZE": "2", "RANK": "2", "LOCAL_RANK": "0"})
    with pytest.raises(SpecError, match="integers"):
        Launch.from_env({"WORLD_SIZE": "two", "RANK": "0", "LOCAL_RANK": "0"})


def test_spec_gpus_against_the_launch_and_the_machine():
    distributed.check_gpus(2, Launch(world_size=2, launched=True), visible_gpus=2)
    distributed.check_gpus(4, Launch(), visible_gpus=None)  # CPU: ranks are processes
    with pytest.raises(SpecError, match="disagree"):
        distributed.check_gpus(2, Launch(world_size=4, rank=0, launched=True), visible_gpus=4)
    with pytest.raises(SpecError, match="sees 2"):
        distributed.check_gpus(4, Launch(), visible_gpus=2)
    assert distributed.needs_launcher(2, Launch()) and not distributed.needs_launcher(1, Launch())
    assert not distributed.needs_launcher(2, Launch(world_size=2, launched=True))


def test_rank_env_splits_the_cores_unless_told():
    env = distributed.rank_env({}, world=2, rank=1, port=1234)
    assert (env["RANK"], env["LOCAL_RANK"], env["WORLD_SIZE"], env["MASTER_PORT"]) == ("1", "1", "2", "1234")
    assert int(env["OMP_NUM_THREADS"]) == max(1, (os.cpu_count() or 1) // 2)
    assert distributed.rank_env({"OMP_NUM_THREADS": "7"}, world=2, rank=0, port=1)["OMP_NUM_THREADS"] == "7"


@pytest.mark.parametrize(
    ("world", "expected"),
    [
        (2, {"ulysses_degree": 2}),
        (4, {"ulysses_degree": 4}),
        (8, {"ulysses_degree": 8}),
        (3, {"ulysses_degree": 3, "ulysses_anything": True}),  # 40 heads do not split 3 ways
    ],
)
def test_ulysses_when_the_ranks_divide_the_40_heads(world, expected):
    from diffusers import ContextParallelConfig

    assert parallel_degrees(world, 40) == expected
    ContextParallelConfig(**expected)  # diffusers accepts it
    with pytest.raises(ValueError, match="at least 2"):
        parallel_degrees(1, 40)


def test_a_non_zero_rank_cannot_write(tmp_path):
    storage = LocalStorage(tmp_path, "run-1")
    storage.write("runs/run-1/a.txt", b"x")
    view = ReadOnlyStorage(storage, rank=1)
    assert view.read("runs/run-1/a.txt") == b"x" and view.exists("runs/run-1/a.txt")
    for call in (
        lambda: view.write("runs/run-1/b.txt", b"y"),
        lambda: view.upload("runs/run-1/b.txt", tmp_path / "a.txt", "text/plain"),
        lambda: view.delete("runs/run-1/a.txt"),
    ):
        with pytest.raises(PermissionError, match="only rank 0 writes"):
            call()
    assert view.blocked == ["runs/run-1/b.txt"] * 2 + ["runs/run-1/a.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_the_cp_benchmark_summary():
    from benchmarks.cp_scaling import main, summarize

    one, two = {"median_s": 3.0}, {"median_s": 1.6}
    summary = summarize(one, two, {"max_abs_diff": 0.03, "rel_l2": 0.002, "finite": True})
    assert (summary["speedup"], summary["scaling_efficiency"], summary["within_bf16_tolerance"]) == (
        1.875, 0.938, True,
    )  # fmt: skip
    assert not summarize(one, two, {"max_abs_diff": 0.5, "rel_l2": 0.1, "finite": True})[
        "within_bf16_tolerance"
    ]
    with pytest.raises(SystemExit, match="needs 2 GPUs"):  # this CPU box: refuses instead of running
        main([])
