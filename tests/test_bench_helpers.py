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


# --- bench_train: figures from alternating processes ---------------------------------------------------

def fake_probes(bench, monkeypatch, per_round, loss_gap=0.0):
    """Replace the subprocess probe: round r's `side` takes per_round[r][side] = (seconds, MiB)."""
    calls = []

    def run_probe(side, preset, weights, warmup, steps, threads):
        r = sum(1 for c in calls if c == side)
        calls.append(side)
        seconds, mib = per_round[r][side]
        losses = [2.0 + (loss_gap if side == "peer" else 0.0)] * (warmup + steps)
        return {"seconds": [seconds] * steps, "losses": losses, "peak_bytes": mib * 2**20, "load": 1.0 + r,
                "library": "abc"}
    monkeypatch.setattr(bench, "run_probe", run_probe)
    return calls


def test_bench_train_rows_are_medians_over_alternating_processes(monkeypatch):
    bench = load_bench("bench_train")
    tokens = 12 * 64
    per_round = [{"ours": (0.10, 60), "peer": (0.20, 130)},     # ratio 2.0
                 {"ours": (0.40, 62), "peer": (0.20, 140)},     # 0.5: a round the machine was busy for ours
                 {"ours": (0.12, 61), "peer": (0.15, 135)},     # 1.25
                 {"ours": (0.11, 64), "peer": (0.13, 120)},
                 {"ours": (0.13, 63), "peer": (0.16, 138)}]
    calls = fake_probes(bench, monkeypatch, per_round)
    speed, memory = bench.preset_rows("baby", "w.safetensors", 2, 5, 1, 3)
    assert calls == ["ours", "peer"] * 5                          # alternating, one side at a time
    ours_rates = [tokens / r["ours"][0] for r in per_round]
    peer_rates = [tokens / r["peer"][0] for r in per_round]
    assert speed["ours"] == pytest.approx(tokens / 0.12) and speed["peer"] == pytest.approx(tokens / 0.16)
    assert (speed["ours_min"], speed["ours_max"]) == pytest.approx((min(ours_rates), max(ours_rates)))
    assert (speed["peer_min"], speed["peer_max"]) == pytest.approx((min(peer_rates), max(peer_rates)))
    assert speed["ratio"] == pytest.approx(0.16 / 0.12)
    assert (speed["ratio_min"], speed["ratio_max"]) == pytest.approx((0.5, 2.0))
    assert speed["rounds"] == 5 and (speed["load_min"], speed["load_max"]) == (1.0, 5.0)
    assert speed["libraries"] == ["abc"]
    assert memory["ours"] == pytest.approx(62) and memory["peer"] == pytest.approx(135)
    assert memory["ratio"] == pytest.approx(135 / 62)
    assert (memory["ratio_min"], memory["ratio_max"]) == pytest.approx((120 / 64, 140 / 62))


def test_bench_train_refuses_to_report_when_the_losses_disagree(monkeypatch):
    bench = load_bench("bench_train")
    fake_probes(bench, monkeypatch, [{"ours": (0.1, 60), "peer": (0.2, 130)}], loss_gap=5e-3)
    with pytest.raises(RuntimeError, match="disagree"):
        bench.preset_rows("baby", "w.safetensors", 2, 1, 1, 3)


def test_bench_train_peer_process_builds_no_model_of_ours(monkeypatch, tmp_path):
    """The peer's process loads the shared weights file into torch and never builds our GPT
    (it used to build ours first, which put our model and AdamW state into PyTorch's peak)."""
    pytest.importorskip("torch")
    bench = load_bench("bench_train")
    weights = str(tmp_path / "baby.safetensors")
    bench.write_initial_weights("baby", weights)
    [(idx, targets)] = bench.batches("baby", 1)
    ours_loss = bench.build_ours("baby", weights)(idx, targets)

    import microgpt.nn

    def refuse(*args, **kwargs):
        raise AssertionError("the peer built a microgpt GPT")
    monkeypatch.setattr(microgpt.nn.GPT, "__init__", refuse)
    peer_loss = bench.build_peer("baby", weights)(idx, targets)
    assert abs(ours_loss - peer_loss) < 1e-5
