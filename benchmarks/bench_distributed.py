"""Distributed training over MPI: scaling, bytes on the wire against the textbook, ZeRO-1 memory.

    flock /tmp/bench.lock python benchmarks/bench_distributed.py [--quick] [--json FILE]

Rows (targets written before the run):
    dp2 efficiency           tokens/s of DP=2 over twice those of 1 process, 1 thread per rank,
                             the same per-rank batch (weak scaling); target >= 0.85
    comm bytes dp / zero1 / tp / pp
                             bytes one rank sends per optimizer step, counted in
                             distributed.Comm from the buffers each call hands MPI, against
                             the textbook formula (P parameters, B rows per rank, T, C, L
                             layers, N ranks, 4-byte floats):
                               dp      ring allreduce of the gradients     2 (N-1)/N 4P
                               zero1   reduce-scatter of the gradients + allgather of the
                                       parameters                          2 (N-1)/N 4P
                               tp      (4L + 2) allreduces of (B, T, C) (2 per block pair,
                                       forward and backward; the embedding's sum and the LM
                                       head's input gradient) + 3 of (B T) float64 (the
                                       vocabulary-parallel cross-entropy)
                                                                   2 (N-1)/N (4L+2) 4BTC + 2 (N-1)/N 3 8BT
                               pp      one stage boundary: activations forward, their
                                       gradients backward, each rank one way   4BTC
                             target: measured / formula within [1, 1.01] (padding only)
    zero1 optimizer memory   AdamW state held per rank with ZeRO-1 at N=2 over the unsharded
                             state; target <= 0.55
    pp bubble                the share of a step a stage waits in Recv, against
                             (pp-1)/(M+pp-1) (reported, no target)

Every run is `mpirun -n N python benchmarks/bench_distributed.py --worker ...`: the worker
trains a few steps through distributed.build on a small corpus, and rank 0 writes what the
ranks measured. Nothing here assumes one machine: the same command under a hostfile measures
a cluster. Rounds alternate 1 process and DP=2; the efficiency is the median of the rounds.
"""
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

MODEL = dict(family="gpt2", bias=False, n_layer=4, n_head=4, n_embd=128, block_size=64,
             tie_embeddings=False)
ROWS_PER_RANK = 8


def _env():
    env = dict(os.environ, MICROGPT_NUM_THREADS="1", OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    return env


def _corpus(directory):
    sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))
    import pathlib

    from train_helpers import byte_tokenizer, tiny_corpus
    d = pathlib.Path(directory)
    return tiny_corpus(d, documents=400), byte_tokenizer(d)


def worker(spec_path):
    """Under mpirun: train spec["steps"] steps, rank 0 writes the ranks' reports."""
    from microgpt.train.config import make_config
    from microgpt.train.distributed import ParallelConfig, build, connect
    spec = json.load(open(spec_path))
    grid = connect(ParallelConfig(**spec["layout"]))
    config = make_config("demo", None, dict(spec["config"], out_dir=spec["out_dir"]))
    trainer = build(grid, config=config, log=lambda *a: None)
    trainer.log = lambda *a: None
    for _ in range(spec["warmup"]):
        trainer.train_step()
    grid.traffic.clear()
    if trainer.pipeline is not None:
        trainer.pipeline.stats.update(wait_s=0.0, step_s=0.0, steps=0)
    grid.world.barrier()
    start = time.perf_counter()
    for _ in range(spec["steps"]):
        trainer.train_step()
    grid.world.barrier()
    seconds = time.perf_counter() - start
    reports = grid.world.allgather_object(trainer.report())
    if grid.writer:
        tokens = spec["steps"] * config.batch_size * config.block_size
        with open(spec["result"], "w") as f:
            json.dump({"tokens_per_s": tokens / seconds, "seconds": seconds, "reports": reports,
                       "parameters": trainer.model.num_parameters() if spec["layout"].get("pp", 1) == 1
                       and spec["layout"].get("tp", 1) == 1 else None}, f)


def launch(n, layout, config, steps, warmup, scratch):
    spec = {"layout": layout, "config": config, "steps": steps, "warmup": warmup,
            "out_dir": tempfile.mkdtemp(dir=scratch), "result": os.path.join(scratch, "result.json")}
    spec_path = os.path.join(scratch, "spec.json")
    json.dump(spec, open(spec_path, "w"))
    command = ["mpirun", "-n", str(n), "--oversubscribe", sys.executable, os.path.abspath(__file__),
               "--worker", spec_path]
    done = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=1800)
    if done.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    shutil.rmtree(spec["out_dir"], ignore_errors=True)
    return json.load(open(spec["result"]))


def sent(report, *labels):
    return sum(report["traffic"].get(label, {}).get("sent", 0) for label in labels)


def main():
    import harness
    args = harness.parse_args(__doc__.splitlines()[0])
    rounds, steps = (1, 5) if args.quick else (5, 30)
    scratch = tempfile.mkdtemp(prefix="bench_distributed_")
    corpus, tokenizer = _corpus(scratch)
    base = dict(MODEL, data=corpus, tokenizer=tokenizer, val_fraction=0.05, max_steps=1000,
                warmup_steps=10, progress=False, num_samples=0, eval_interval=1000,
                checkpoint_interval=1000)
    rows, loads = [], []
    # --- dp2 efficiency: alternate 1 process and DP=2 ---------------------------------------
    one, two = [], []
    for _ in range(rounds):
        loads.append(harness.load_average()[0])
        one.append(launch(1, {"dp": 1}, dict(base, batch_size=ROWS_PER_RANK), steps, 3, scratch)["tokens_per_s"])
        loads.append(harness.load_average()[0])
        two.append(launch(2, {"dp": 2}, dict(base, batch_size=2 * ROWS_PER_RANK), steps, 3, scratch)["tokens_per_s"])
    ratios = [b / (2 * a) for a, b in zip(one, two)]
    eff = statistics.median(ratios)
    rows.append({"name": "dp2 efficiency", "ours": eff, "ours_min": min(ratios), "ours_max": max(ratios),
                 "one_process_tokens_per_s": statistics.median(one), "dp2_tokens_per_s": statistics.median(two),
                 "rounds": rounds, "target": 0.85, "passed": eff >= 0.85,
                 "load_min": min(loads), "load_max": max(loads)})
    # --- bytes per step against the formulas ------------------------------------------------
    N, L, C, T, B = 2, MODEL["n_layer"], MODEL["n_embd"], MODEL["block_size"], ROWS_PER_RANK
    ring = 2 * (N - 1) / N
    cfg = dict(base, batch_size=N * B)
    dp = launch(2, {"dp": 2}, cfg, 3, 1, scratch)
    zero = launch(2, {"dp": 2, "zero1": True}, cfg, 3, 1, scratch)
    P = dp["parameters"]
    tp = launch(2, {"tp": 2}, dict(base, batch_size=B), 3, 1, scratch)
    pp = launch(2, {"pp": 2, "micro_batches": 4}, dict(base, batch_size=B), 3, 1, scratch)
    per_step = lambda result, *labels: max(sent(r, *labels) for r in result["reports"]) / 3   # noqa: E731
    formulas = {
        "dp": (per_step(dp, "dp grads"), ring * 4 * P, f"2(N-1)/N 4P, P={P}"),
        "zero1": (per_step(zero, "zero1 grads", "zero1 params"), ring * 4 * P, f"2(N-1)/N 4P, P={P}"),
        "tp": (per_step(tp, "tp"), ring * (4 * L + 2) * 4 * B * T * C + ring * 3 * 8 * B * T,
               f"2(N-1)/N ((4L+2) 4BTC + 3 8BT), L={L} B={B} T={T} C={C}"),
        "pp": (per_step(pp, "pp"), 4 * B * T * C, f"4BTC, B={B} T={T} C={C}"),
    }
    for mode, (measured, formula, text) in formulas.items():
        ratio = measured / formula
        rows.append({"name": f"comm bytes {mode}", "ours": measured, "formula": formula, "formula_text": text,
                     "ratio": ratio, "target": "[1, 1.01]", "passed": 1 <= ratio <= 1.01, "n": N})
    comm_seconds = max(sum(v.get("seconds", 0.0) for v in r["traffic"].values()) for r in dp["reports"])
    rows.append({"name": "dp comm share", "ours": comm_seconds / dp["seconds"],
                 "note": "share of a DP=2 step inside the collectives: the most that overlapping "
                         "the gradient buckets with the backward could save"})
    held = max(r["optimizer_bytes"] for r in zero["reports"])
    unsharded = zero["reports"][0]["unsharded_optimizer_bytes"]
    rows.append({"name": "zero1 optimizer memory", "ours": held / unsharded, "ours_bytes": held,
                 "unsharded_bytes": unsharded, "target": 0.55, "passed": held / unsharded <= 0.55, "n": N})
    bubble = [r for r in pp["reports"] if "bubble_measured" in r]
    rows.append({"name": "pp bubble", "ours": max(r["bubble_measured"] for r in bubble),
                 "textbook": bubble[0]["bubble_textbook"], "micro_batches": 4, "stages": 2})
    shutil.rmtree(scratch, ignore_errors=True)
    result = {"machine": harness.machine(), "quick": bool(args.quick), "model": MODEL,
              "rows_per_rank": ROWS_PER_RANK, "steps": steps, "rows": rows,
              "command": "flock /tmp/bench.lock python benchmarks/bench_distributed.py"
                         + (" --quick" if args.quick else "")}
    for r in rows:
        print(json.dumps(r))
    if args.json:
        from microgpt.fileio import atomic_write
        with atomic_write(args.json) as f:
            f.write(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        worker(sys.argv[2])
    else:
        main()
