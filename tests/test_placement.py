"""The build's shard placement (tasks/build/placement.py): order, fairness, and O(log W) work per pick."""

from __future__ import annotations

import heapq
import math
import random

import pandas as pd
import pytest

from facelift.tasks.build.placement import LeastBusy, ShardRows


def test_picks_fill_every_worker_before_any_gets_a_second_shard():
    lb = LeastBusy(5, depth=2)
    first = [lb.pick() for _ in range(5)]
    assert first == [0, 1, 2, 3, 4]  # round robin, in worker order
    assert sorted(lb.pick() for _ in range(5)) == [0, 1, 2, 3, 4] and lb.pick() is None
    lb.release(3)
    assert lb.pick() == 3 and lb.pick() is None and lb.in_flight == 10


def test_release_without_a_shard_in_flight_is_refused():
    lb = LeastBusy(2, depth=1)
    with pytest.raises(ValueError, match="no shard in flight"):
        lb.release(0)
    with pytest.raises(ValueError, match="at least one worker"):
        LeastBusy(0)


def test_ties_go_to_the_worker_assigned_longest_ago():
    lb = LeastBusy(3, depth=1)
    for _ in range(3):
        lb.pick()
    lb.release(2)
    lb.release(0)  # both idle now: 0 was assigned before 2, so 0 comes first
    assert lb.pick() == 0 and lb.pick() == 2


def _simulate(speeds: list[float], shards: int, depth: int = 1) -> list[int]:
    """Discrete-event run: worker k needs speeds[k] seconds per shard; returns the shards each worker ran."""
    lb, events, done, t = LeastBusy(len(speeds), depth), [], [0] * len(speeds), 0.0
    todo = shards
    while todo or events:
        while todo and (w := lb.pick()) is not None:
            heapq.heappush(events, (t + speeds[w] * lb.load[w], w))
            todo -= 1
        t, w = heapq.heappop(events)
        lb.release(w)
        done[w] += 1
    return done


@pytest.mark.parametrize("workers", [1, 7, 64, 300])
def test_equal_workers_get_equal_shares(workers):
    done = _simulate([1.0] * workers, shards=workers * 10 + 3)
    assert max(done) - min(done) <= 1 and sum(done) == workers * 10 + 3


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_faster_workers_get_proportionally_more_shards(seed):
    rng = random.Random(seed)
    speeds = [rng.choice([1.0, 2.0, 4.0]) for _ in range(24)]
    done = _simulate(speeds, shards=2400)
    rate = [1 / s for s in speeds]
    for k, n in enumerate(done):
        expected = 2400 * rate[k] / sum(rate)
        assert abs(n - expected) <= 0.1 * expected + 2, (k, n, expected)


def _comparisons_per_update(workers: int, depth: int, rounds: int = 20, seed: int = 0) -> float:
    """Heap comparisons per release + pick, in steady state with random completion order."""
    rng = random.Random(seed)
    lb = LeastBusy(workers, depth)
    while lb.pick() is not None:
        pass
    busy = [w for w in range(workers) for _ in range(depth)]
    before = lb.counter.comparisons
    for _ in range(rounds * workers):
        i = rng.randrange(len(busy))
        busy[i], busy[-1] = busy[-1], busy[i]
        lb.release(busy.pop())
        busy.append(lb.pick())
    return (lb.counter.comparisons - before) / (rounds * workers)


@pytest.mark.parametrize("depth", [1, 2])
def test_a_pick_costs_log_w_comparisons_not_w(depth):
    costs = {w: _comparisons_per_update(w, depth) for w in (8, 64, 512)}
    for w, c in costs.items():
        assert c <= 3 * math.log2(w) + 12, costs  # O(log W); the old scan did ~W * in-flight steps per pick
        assert c >= math.log2(w) / 2, costs  # it is a real heap, not a constant-time shortcut
    assert costs[512] / costs[8] < 4, costs  # 64x the workers: about 3x (log) the work, not 64x


def test_heap_stays_bounded_under_churn():
    lb = LeastBusy(100, 1)
    for _ in range(100):
        lb.pick()
    for i in range(10_000):
        lb.release(i % 100)
        lb.pick()
    assert len(lb._heap) <= 2 * 100 + 16


def shard_rows(plan: pd.DataFrame, shard: int) -> list[dict]:
    """The plain scan that ShardRows' index replaces."""
    part = plan[plan["shard"] == shard]
    return [{**r, "seed": int(r["seed"]), "shard": int(r["shard"])} for r in part.to_dict("records")]


def test_shard_rows_index_matches_the_plan_scan():
    rng = random.Random(3)
    plan = pd.DataFrame({"pair_id": [f"p{i}" for i in range(200)], "name": "n", "nconst": None, "prompt": "x",
                         "seed": [rng.randrange(1 << 30) for _ in range(200)],
                         "shard": [rng.randrange(17) for _ in range(200)], "weight": 1.0})
    rows = ShardRows(plan.sample(frac=1, random_state=1))
    for shard in range(-1, 18):
        got = sorted(rows(shard), key=lambda r: r["pair_id"])
        assert got == sorted(shard_rows(plan, shard), key=lambda r: r["pair_id"])


def test_scale_bench_loop_prints_its_table():
    import subprocess
    import sys
    from pathlib import Path

    bench = Path(__file__).resolve().parents[1] / "bench" / "scale.py"
    out = subprocess.run([sys.executable, str(bench), "loop", "--workers", "4", "16", "--shards", "50",
                          "--shard-s", "2", "--no-save"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("| 4 ") or ln.startswith("| 16 ")]
    assert len(lines) == 2
    cells = [c.strip() for c in lines[1].strip("|").split("|")]  # workers, shards, us/shard, comparisons, ...
    assert cells[:2] == ["16", "50"] and 0 < float(cells[3]) < 40


def test_a_worker_taken_down_is_never_picked_until_brought_up():
    lb = LeastBusy(3, depth=2)
    assert [lb.pick() for _ in range(3)] == [0, 1, 2]
    lb.take_down(1)
    lb.release(1)  # its shard failed: released, but it stays out of the pool
    assert sorted(lb.pick() for _ in range(2)) == [0, 2] and lb.pick() is None and lb.up == 2
    lb.bring_up(1)
    assert lb.pick() == 1 and lb.pick() == 1 and lb.pick() is None
    for w in (0, 1, 2):
        lb.take_down(w)
    assert lb.peek() is None and lb.up == 0
