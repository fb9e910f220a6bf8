"""Distributed training under `mpirun -n 2` (and 4): every mode equals one process.

The oracle is the single-process trainer on the same config, seed and data: the per-step
losses (log_interval 1) of 20 steps and the final weights and AdamW moments of the
checkpoint agree to 1e-5 (float32). Checkpoints of a 2-rank run resume in 1 and in 2
processes with the next losses of the uninterrupted run; a raising rank, a killed rank and
a config that differs between ranks each end the job with a non-zero status in bounded time.

The runs are real `mpirun ... python -m microgpt train` subprocesses, one thread per rank.
Where mpirun is absent the MPI tests skip with that reason (CI installs OpenMPI).

Why the GPT-2 runs have bias=False: the key bias of attention has a gradient that is exactly
zero (q . (k + b) adds q . b to every score of a query, and softmax ignores a constant), so in
float32 it is rounding noise, which AdamW's m / sqrt(v) turns into steps of about lr. No
parallel order of summation reproduces one process's noise: with bias=True, DP=2 matches one
process to 2e-7 in every weight but those elements (3e-5 at lr 1e-2). The Llama runs (no
biases) and GPT-2 without biases test every weight.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from microgpt.cli import main
from train_helpers import byte_tokenizer, tiny_corpus

MPIRUN = shutil.which("mpirun")
try:
    import mpi4py  # noqa: F401
    _NO_MPI = None if MPIRUN else ("mpirun not found (OpenMPI is not installed: apt-get install "
                                   "openmpi-bin libopenmpi-dev)")
except ImportError:
    _NO_MPI = "mpi4py is not installed (pip install 'microgpt[mpi]')"
needs_mpirun = pytest.mark.skipif(_NO_MPI is not None, reason=_NO_MPI or "")

TOLERANCE = 1e-5
STEPS = 20


def _env(**extra):
    env = dict(os.environ, MICROGPT_NUM_THREADS="1", OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
               PYTHONUNBUFFERED="1")
    if hasattr(os, "geteuid") and os.geteuid() == 0:        # OpenMPI refuses root without these
        env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    for name in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE"):   # never a rank ourselves
        env.pop(name, None)
    env.update(extra)
    return env


def _flags(data, family, out_dir, **extra):
    values = dict(family=family, data=data["corpus"], tokenizer=data["tokenizer"], val_fraction=0.1,
                  n_layer=2, n_head=4, n_embd=32, block_size=16, batch_size=8, max_steps=STEPS,
                  warmup_steps=2, lr=3e-3, min_lr=1e-4, eval_interval=10, eval_batches=2,
                  checkpoint_interval=10, log_interval=1, num_samples=0, progress="false",
                  out_dir=out_dir, seed=7)
    if family == "gpt2":
        values.update(bias="false")
    else:
        values.update(n_kv_head=2, tie_embeddings="false")
    values.update(extra)
    flags = []
    for key, value in values.items():
        flags += [f"--{key.replace('_', '-')}", str(value)]
    return flags


def _mpirun(n, args, timeout=240, env=None):
    command = [MPIRUN, "-n", str(n), "--oversubscribe", sys.executable, "-m", "microgpt", "train", *args]
    return subprocess.run(command, env=env or _env(), capture_output=True, text=True, timeout=timeout)


def _losses(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return {r["step"]: r["loss"] for r in map(json.loads, f) if "loss" in r}


def _tensors(run_dir, step, name):
    from safetensors.numpy import load_file
    return load_file(os.path.join(run_dir, "checkpoints", f"step_{step:06d}", name))


def _assert_close(a, b, what):
    assert a.keys() == b.keys(), f"{what}: names differ: {sorted(set(a) ^ set(b))[:4]}"
    worst = max((float(np.max(np.abs(a[k] - b[k]))), k) for k in a)
    assert worst[0] < TOLERANCE, f"{what}: largest difference {worst[0]:.2e} in {worst[1]}"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    directory = tmp_path_factory.mktemp("distributed")
    return {"dir": directory, "corpus": tiny_corpus(directory, documents=80),
            "tokenizer": byte_tokenizer(directory)}


@pytest.fixture(scope="module")
def reference(data):
    """One process's run of each family (the oracle), made once."""
    runs = {}
    for family in ("gpt2", "llama"):
        out = str(data["dir"] / f"one_{family}")
        assert main(["train", *_flags(data, family, out)]) == 0
        runs[family] = out
    return runs


def _check_equal_to_one_process(reference_dir, run_dir):
    one, many = _losses(reference_dir), _losses(run_dir)
    assert sorted(many) == list(range(1, STEPS + 1))
    worst = max(abs(one[s] - many[s]) for s in one)
    assert worst < TOLERANCE, f"losses differ by up to {worst:.2e}"
    _assert_close(_tensors(reference_dir, STEPS, "model.safetensors"),
                  _tensors(run_dir, STEPS, "model.safetensors"), "final weights")
    _assert_close(_tensors(reference_dir, STEPS, "optimizer.safetensors"),
                  _tensors(run_dir, STEPS, "optimizer.safetensors"), "AdamW moments (gathered)")


MODES = [
    ("gpt2", 2, ["--dp", "2"]),
    ("gpt2", 2, ["--dp", "2", "--zero1"]),          # the gathered sharded state = the unsharded
    ("gpt2", 2, ["--tp", "2"]),
    ("gpt2", 2, ["--pp", "2"]),                     # tied embeddings across the two stages
    ("llama", 2, ["--tp", "2"]),                    # GQA: 4 query heads, 2 kv heads, split
    ("llama", 2, ["--pp", "2", "--micro-batches", "4"]),
    ("llama", 4, ["--dp", "2", "--tp", "2", "--zero1"]),
]


@needs_mpirun
@pytest.mark.parametrize("family,n,layout", MODES, ids=lambda v: "-".join(v) if isinstance(v, list) else str(v))
def test_every_mode_equals_one_process(data, reference, family, n, layout):
    out = str(data["dir"] / f"{family}_{'_'.join(layout).replace('-', '')}")
    done = _mpirun(n, _flags(data, family, out) + layout)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("distributed:") == 1            # rank 0 alone logs
    _check_equal_to_one_process(reference[family], out)


@needs_mpirun
def test_a_two_rank_checkpoint_resumes_in_one_and_in_two_processes(data, reference):
    """The step-10 checkpoint of a DP=2 ZeRO-1 run continues in 1 process and under TP=2
    with the losses of the uninterrupted run (the one-process reference) at steps 11-20."""
    out = str(data["dir"] / "resume_src")
    done = _mpirun(2, _flags(data, "llama", out) + ["--dp", "2", "--zero1"])
    assert done.returncode == 0, done.stderr[-3000:]
    expected = _losses(reference["llama"])
    for name, launch in (("in_one", None), ("in_two", ["--tp", "2"])):
        copy = str(data["dir"] / f"resume_{name}")
        shutil.copytree(out, copy)
        shutil.rmtree(os.path.join(copy, "checkpoints", f"step_{STEPS:06d}"))
        if launch is None:
            assert main(["train", "--resume", copy]) == 0
        else:
            done = _mpirun(2, ["--resume", copy] + launch)
            assert done.returncode == 0, done.stderr[-3000:]
        got = _losses(copy)
        worst = max(abs(got[s] - expected[s]) for s in range(11, STEPS + 1))
        assert worst < TOLERANCE, f"resumed {name}: losses differ by up to {worst:.2e}"


def _long_run(data, out):
    return _flags(data, "gpt2", out, max_steps=100000, eval_interval=100000, checkpoint_interval=100000)


@needs_mpirun
def test_a_raising_rank_ends_the_job_with_its_error_printed_once(data):
    out = str(data["dir"] / "fault")
    args = [sys.executable, "-m", "microgpt", "train", *_long_run(data, out), "--dp", "2"]
    command = [MPIRUN, "--oversubscribe", "-n", "1", *args, ":", "-n", "1", "-x", "MICROGPT_FAULT_AT_STEP=3", *args]
    start = time.monotonic()
    done = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert time.monotonic() - start < 100
    assert done.stderr.count("fault injected at step 3") == 1, done.stderr[-3000:]
    assert "rank 1 of 2" in done.stderr


@needs_mpirun
def test_a_config_that_differs_between_ranks_is_refused_at_start_up(data):
    out = str(data["dir"] / "mismatch")
    args = [sys.executable, "-m", "microgpt", "train", *_flags(data, "gpt2", out)]
    command = [MPIRUN, "--oversubscribe", "-n", "1", *args, ":", "-n", "1", *args, "--lr", "0.002"]
    done = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr[-3000:]
    assert done.stderr.count("rank 1 was started with another config than rank 0: lr") == 1
    assert not os.path.exists(os.path.join(out, "checkpoints"))


@needs_mpirun
def test_a_killed_rank_makes_the_job_exit_nonzero_in_bounded_time(data):
    out = str(data["dir"] / "killed")
    command = [MPIRUN, "-n", "2", "--oversubscribe", sys.executable, "-m", "microgpt", "train",
               *_long_run(data, out), "--dp", "2"]
    job = subprocess.Popen(command, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        metrics = os.path.join(out, "metrics.jsonl")
        deadline = time.monotonic() + 90
        while not (os.path.exists(metrics) and os.path.getsize(metrics) > 0):     # training runs
            assert time.monotonic() < deadline and job.poll() is None, "the job did not start training"
            time.sleep(0.2)
        ranks = subprocess.run(["pgrep", "-P", str(job.pid)], capture_output=True, text=True).stdout.split()
        assert ranks, "no rank processes found under mpirun"
        os.kill(int(ranks[-1]), signal.SIGKILL)
        killed = time.monotonic()
        job.wait(timeout=60)
        assert job.returncode != 0
        assert time.monotonic() - killed < 60
    finally:
        if job.poll() is None:
            job.kill()
            job.wait()


# --- without MPI ---------------------------------------------------------------------------------

def test_parallel_flags_in_one_process_are_a_one_line_error(capsys, tmp_path, monkeypatch):
    for name in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert main(["train", "--tp", "2", "--out-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "mpirun -n 2" in err


def test_microgpt_imports_and_explains_without_mpi4py(tmp_path):
    """mpi4py is an optional extra: importing microgpt (and its distributed module) works
    without it, and a run under an MPI launcher says what to install."""
    code = ("import sys; sys.modules['mpi4py'] = None\n"
            "import microgpt, microgpt.train.distributed\n"
            "from microgpt.cli import main\n"
            f"sys.exit(main(['train', '--dp', '2', '--out-dir', {str(tmp_path / 'run')!r}]))\n")
    env = _env(OMPI_COMM_WORLD_SIZE="2")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert "pip install 'microgpt[mpi]'" in done.stderr and len(done.stderr.strip().splitlines()) == 1
