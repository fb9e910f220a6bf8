"""The benchmarks' own logic: the criteria they judge by and the figures they derive.

A benchmark that judges its result by a criterion chosen after the run, or that reports a
figure its own samples do not support, is worse than none; these tests pin the criteria to
what the scripts' docstrings promise and check the recorded results against them.
"""
import importlib.util
import json
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "benchmarks")
RESULTS = os.path.join(BENCH, "results")


def load_bench(name):
    """Import benchmarks/NAME.py as a module (benchmarks/ is not a package)."""
    if BENCH not in sys.path:
        sys.path.insert(0, BENCH)
    spec = importlib.util.spec_from_file_location(f"bench_{name}_under_test", os.path.join(BENCH, name + ".py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- gpu_check: the loss-parity target fixed before the first GPU run ---------------------------------

def test_gpu_loss_parity_is_the_largest_gap_over_every_step():
    gpu_check = load_bench("gpu_check")
    ours = [10.0, 10.5, 9.0, 8.0]
    peer = [10.0, 10.5, 9.004, 8.0]              # equal at the end, 4e-3 apart at step 3
    largest, worst = gpu_check.max_gap(ours, peer)
    assert largest == pytest.approx(4e-3) and worst == 2
    assert gpu_check.LOSS_TARGET.startswith("every step")


def test_recorded_gpu_loss_row_is_judged_by_the_largest_gap():
    """gpu.json's loss row: PASS only if every one of its stored steps is within 1e-3."""
    gpu_check = load_bench("gpu_check")
    with open(os.path.join(RESULTS, "gpu.json")) as f:
        rows = json.load(f)["rows"]
    [loss] = [r for r in rows if r["section"] == "train" and r["unit"] == "loss"]
    largest, _ = gpu_check.max_gap(loss["losses_ours"], loss["losses_peer"])
    assert loss["target"] == gpu_check.LOSS_TARGET
    assert loss["passed"] == (largest <= 1e-3)


# --- harness: the row every benchmark reports ---------------------------------------------------------

@pytest.mark.parametrize("unit", ["ms", "tokens/s"])
def test_harness_rows_order_min_median_max_for_times_and_rates(monkeypatch, unit):
    harness = load_bench("harness")
    seconds = iter([0.010, 0.020, 0.030, 0.060, 0.020, 0.040, 0.050, 0.080, 0.040, 0.020])
    monkeypatch.setattr(harness, "_time", lambda fn: next(seconds))
    case = harness.Case("fake", ours=lambda: None, peer=lambda: None, unit=unit, work=100.0, repeats=5, warmup=0)
    [row] = harness.run_cases([case], argparse_namespace())
    for side in ("ours", "peer"):
        assert row[f"{side}_min"] <= row[side] <= row[f"{side}_max"], (side, row)
    if unit == "ms":       # ours took 10, 30, 20, 50, 40 ms; the peer 20, 60, 40, 80, 20 ms
        assert (row["ours_min"], row["ours"], row["ours_max"]) == pytest.approx((10, 30, 50))
        assert row["ratio"] == pytest.approx(40 / 30)
    else:                  # rates: 100 / seconds, so the slowest call is the minimum
        assert (row["ours_min"], row["ours_max"]) == pytest.approx((2000, 10000))
        assert (row["peer_min"], row["peer_max"]) == pytest.approx((1250, 5000))


def argparse_namespace(**kwargs):
    import argparse
    return argparse.Namespace(json=None, quick=False, **kwargs)
