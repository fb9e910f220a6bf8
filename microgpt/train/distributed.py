"""Training on several processes over MPI: data, tensor and pipeline parallelism, ZeRO-1.

    mpirun -n 2 microgpt train --dp 2 ...                 two replicas, half a batch each
    mpirun -n 2 microgpt train --dp 2 --zero1 ...         the same, AdamW's moments split
    mpirun -n 2 microgpt train --tp 2 ...                 one model, its matrices split
    mpirun -n 2 microgpt train --pp 2 ...                 one model, its layers split
    mpirun -n 4 microgpt train --dp 2 --tp 2 ...          both (dp x tp x pp = N)

Under mpirun with no sizes given, all N ranks are data parallel. The transport is MPI
(mpi4py over OpenMPI or any MPI), as llm.c uses it for multi-GPU and multi-node runs: this
module only decides what to send; `Comm` wraps the communicator and counts the bytes.

The grid. Rank = (dp_index * pp + pp_index) * tp + tp_index: the ranks of one
tensor-parallel group are neighbours (on a cluster, the GPUs of one node, where the
bandwidth is), then the pipeline stages, then the replicas. Each rank belongs to one group
of each kind (`Grid`): tp (one allreduce per block pair, distributed_tp.py), pp (point to
point, distributed_pp.py), dp (gradients), and, with tied embeddings and pp > 1, `embed`
(the first and the last stage, which both hold the token table).

Every mode equals one process at the same global batch (to float32 rounding; the tests
check 20 steps to 1e-5). What each rank computes:

    data parallel   rank d of dp reads rows [d B/dp, (d+1) B/dp) of every global batch (its
                    own windows only), backpropagates the mean loss of its rows, and the
                    gradients are averaged:  g = (1/dp) sum_d g_d  is the gradient of the
                    mean over all B rows, since every rank has B/dp rows.
    ZeRO-1          the same g, but reduce-scattered: rank d gets the sum of its 1/dp slice of
                    the flat gradient, updates that slice of the parameters with AdamW moments
                    it alone holds (1/dp of them), and an allgather gives every rank all of the
                    parameters. AdamW is elementwise, so slicing changes nothing but memory.
    tensor/pipeline distributed_tp.py, distributed_pp.py.

Clipping is global: ||g||^2 is a sum over the whole model's elements, each counted once (a
piece that several ranks hold whole, such as a norm gain under tp, by one of them), summed
over all ranks in float64; every rank then applies the same factor.

Determinism: an allreduce here is a reduce-scatter then an allgather (the ring algorithm's
two halves, 2 (N-1)/N of the buffer sent per rank): each slice is summed once, by one rank,
and the result copied to the others, so every rank holds the same bits and the replicas can
never drift apart. The gradients are reduced after the backward, in flat buckets of
BUCKET_BYTES. Overlapping a bucket's reduction with the rest of the backward needs the
reduction to progress while Python computes; OpenMPI progresses a non-blocking collective
only inside MPI calls (no progress thread, one thread per rank), so the overlap would save
little here: the benchmark measures the share of the step spent communicating, the most
that overlap could win (benchmarks/results/distributed.md).

Checkpoints are the single-process format: the pieces are gathered to rank 0, which writes
them (`Trainer.save_checkpoint` through `checkpoint_tensors`). Every rank builds the whole
model and optimizer as one process would (same seed), loads a checkpoint whole, and only
then keeps its own piece, so `--resume` works with any N: re-sharding is the same slicing.
(A model too big for one host would be built sharded; this keeps the code one path.)

Failures. Start-up is a sequence of phases that every rank finishes before the next
(`_agree`): a mistake a user can fix (a bad flag, a config that differs between ranks)
is printed once, by the lowest rank that found it, and every rank exits with status 2.
Once training runs, a rank that raises prints its error, labelled with its rank, and calls
MPI Abort, which ends every rank: a hang is impossible. A rank that dies (killed, out of
memory) is noticed by mpirun, which ends the others and exits non-zero. A NaN streak
(TrainingError) and Ctrl-C reach every rank at the same step; rank 0 reports them.
Rank 0 alone logs, draws the progress bar and writes files. MICROGPT_FAULT_AT_STEP=N makes
the rank it is set on raise at step N (the failure tests set it on one rank).
"""
import dataclasses
import math
import os
import sys
import time
import traceback

import numpy as np

from ..errors import ConfigError, MicrogptError
from .optim import AdamW
from .schedule import lr_at
from .trainer import Trainer, TrainingError, _check_fresh_run_dir, prepare_resume

BUCKET_BYTES = 16 << 20               # gradients are reduced in flat buckets of this size
_WORLD_SIZE_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS")


class DistributedError(MicrogptError, RuntimeError):
    """Distributed training cannot start: no MPI, or sizes that do not fit the world."""


def launched_world_size():
    """The number of ranks mpirun started (1 outside mpirun), read from its environment
    without importing MPI."""
    for name in _WORLD_SIZE_VARIABLES:
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 1


# --- the communicator ----------------------------------------------------------------------------

class Comm:
    """An MPI communicator and what this rank sent through it.

    `traffic[label]` counts, for this rank: "sent", the bytes it sends (a point-to-point
    message's size; for a collective, what the ring algorithm sends per rank for that buffer,
    (N-1)/N of it for a reduce-scatter or an allgather); "payload", the buffers' own sizes;
    "calls"; and "seconds" spent inside the collectives (the communication a step waits for).
    """

    def __init__(self, mpi_comm, traffic):
        self.mpi = mpi_comm
        self.size, self.rank = mpi_comm.Get_size(), mpi_comm.Get_rank()
        self.traffic = traffic                 # shared by every Comm of this rank

    def _count(self, label, sent, payload, seconds=0.0):
        self.traffic.setdefault(label, {"sent": 0, "payload": 0, "calls": 0, "seconds": 0.0})
        entry = self.traffic[label]
        entry["sent"] += int(sent)
        entry["payload"] += int(payload)
        entry["calls"] += 1
        entry["seconds"] += seconds

    def reduce_scatter(self, flat, label):
        """flat (N chunk,) -> this rank's chunk of the sum over ranks."""
        from mpi4py import MPI
        chunk = flat.size // self.size
        out = np.empty(chunk, flat.dtype)
        start = time.perf_counter()
        self.mpi.Reduce_scatter_block(np.ascontiguousarray(flat), out, op=MPI.SUM)
        self._count(label, (self.size - 1) * chunk * flat.itemsize, flat.nbytes, time.perf_counter() - start)
        return out

    def allgather(self, chunk, label):
        """chunk -> the N ranks' chunks end to end."""
        out = np.empty(chunk.size * self.size, chunk.dtype)
        start = time.perf_counter()
        self.mpi.Allgather(np.ascontiguousarray(chunk), out)
        self._count(label, (self.size - 1) * chunk.nbytes, out.nbytes, time.perf_counter() - start)
        return out

    def allreduce(self, array, label):
        """The sum over ranks, with the same bits on every rank (reduce-scatter + allgather)."""
        array = np.asarray(array)
        if self.size == 1:
            return array.copy()
        flat = array.reshape(-1)
        chunk = -(-flat.size // self.size)
        padded = np.zeros(chunk * self.size, flat.dtype)
        padded[:flat.size] = flat
        return self.allgather(self.reduce_scatter(padded, label), label)[:flat.size].reshape(array.shape)

    def allreduce_max(self, array, label):
        """The elementwise max over ranks (exact, so the same on every rank)."""
        from mpi4py import MPI
        array = np.ascontiguousarray(array)
        if self.size == 1:
            return array.copy()
        out = np.empty_like(array)
        self.mpi.Allreduce(array, out, op=MPI.MAX)
        self._count(label, 2 * (self.size - 1) * array.nbytes // self.size, array.nbytes)
        return out

    def isend(self, array, dest, tag, label):
        array = np.ascontiguousarray(array)
        self._count(label, array.nbytes, array.nbytes)
        return self.mpi.Isend(array, dest=dest, tag=tag), array     # keep the buffer alive

    def recv(self, shape, dtype, source, tag, label):
        out = np.empty(shape, dtype)
        self.mpi.Recv(out, source=source, tag=tag)
        return out

    def wait_all(self, requests):
        from mpi4py import MPI
        MPI.Request.Waitall([r for r, _ in requests])

    # control messages (pickled Python objects, not counted: start-up and checkpoints)
    def allgather_object(self, value):
        return self.mpi.allgather(value)

    def gather_object(self, value, root=0):
        return self.mpi.gather(value, root=root)

    def bcast_object(self, value, root=0):
        return self.mpi.bcast(value, root=root)

    def barrier(self):
        self.mpi.Barrier()


@dataclasses.dataclass
class ParallelConfig:
    """The layout: dp x tp x pp ranks; zero1 shards AdamW over dp; micro_batches (0: auto)
    per pipeline batch. None of it changes what is computed, so a checkpoint resumes under
    any layout."""
    dp: int = 0                       # 0: whatever the world leaves (N / (tp pp))
    tp: int = 1
    pp: int = 1
    zero1: bool = False
    micro_batches: int = 0

    def resolve(self, world_size):
        for name in ("dp", "tp", "pp", "micro_batches"):
            value = getattr(self, name)
            lowest = 0 if name in ("dp", "micro_batches") else 1
            if not isinstance(value, int) or isinstance(value, bool) or value < lowest:
                raise ConfigError(f"--{name.replace('_', '-')} must be a positive integer, got {value!r}")
        dp = self.dp or world_size // (self.tp * self.pp)
        if dp < 1 or dp * self.tp * self.pp != world_size:
            raise DistributedError(
                f"--dp {self.dp or '(auto)'} x --tp {self.tp} x --pp {self.pp} does not make the "
                f"{world_size} process{'es' if world_size != 1 else ''} this job has; launch "
                f"`mpirun -n {max(dp, 1) * self.tp * self.pp} microgpt train ...` or change the sizes")
        return dataclasses.replace(self, dp=dp)

    def check_model(self, config, gpt_config):
        """ConfigError unless the training config and model split as asked."""
        from .distributed_tp import check_tp
        if config.batch_size % self.dp:
            raise ConfigError(f"--batch-size {config.batch_size} must be a multiple of --dp {self.dp}: "
                              f"each rank takes batch_size / dp rows of every batch")
        if self.tp > 1:
            check_tp(gpt_config, self.tp)
        if self.pp > gpt_config.n_layer:
            raise ConfigError(f"--pp {self.pp} is more stages than the model's {gpt_config.n_layer} layers")
        rows = config.batch_size // self.dp
        if self.pp > 1 and self.micro_batches_for(rows) > rows:
            raise ConfigError(f"--micro-batches {self.micro_batches} is more than the {rows} rows "
                              f"each pipeline gets (batch_size / dp)")
        if config.device != "cpu":
            raise ConfigError("distributed training runs on the CPU backend for now (--device cpu); "
                              "on GPUs the same plan needs CUDA-aware MPI or NCCL (README)")

    def micro_batches_for(self, rows):
        """The micro-batches of a pipeline batch of `rows`: as given, else 2 pp at most (the
        bubble is (pp-1)/(M+pp-1)), as many as the rows allow."""
        return self.micro_batches or min(rows, 2 * self.pp)


class Grid:
    """This rank's place in dp x pp x tp and a Comm for each group it belongs to."""

    def __init__(self, mpi_world, parallel):
        from mpi4py import MPI
        self.parallel = parallel
        tp, pp = parallel.tp, parallel.pp
        self.traffic = {}
        self.world = Comm(mpi_world, self.traffic)
        rank = self.world.rank
        self.tp_index, self.pp_index, self.dp_index = rank % tp, (rank // tp) % pp, rank // (tp * pp)
        split = lambda color, key: Comm(mpi_world.Split(color, key), self.traffic)   # noqa: E731
        self.tp = split(rank // tp, self.tp_index)
        self.pp = split(self.dp_index * tp + self.tp_index, self.pp_index)
        self.dp = split(self.pp_index * tp + self.tp_index, self.dp_index)
        ends = self.pp_index in (0, pp - 1)
        embed = mpi_world.Split(self.dp_index * tp + self.tp_index if ends else MPI.UNDEFINED,
                                self.pp_index)
        self.embed = Comm(embed, self.traffic) if ends else None

    @property
    def writer(self):
        return self.world.rank == 0


def connect(parallel):
    """The Grid of this process under mpirun; DistributedError without MPI."""
    try:
        from mpi4py import MPI
    except ImportError:
        raise DistributedError("--dp/--tp/--pp and mpirun need mpi4py: pip install 'microgpt[mpi]' "
                               "(with an MPI such as OpenMPI installed: apt-get install "
                               "openmpi-bin libopenmpi-dev)") from None
    world = MPI.COMM_WORLD
    resolved = parallel.resolve(world.Get_size())
    if os.environ.get("MICROGPT_NUM_THREADS") is None:       # one thread per rank by default
        from ..backends import cpu
        cpu.set_num_threads(1)
    return Grid(world, resolved)


def local_batch(loader, rows):
    """Rows `rows` (a slice) of the loader's next global batch, reading only their windows;
    the loader advances by the whole batch, as one process's does."""
    ids = loader._window_ids(loader.position, loader.batch_size)
    loader.position += loader.batch_size
    return loader._gather(ids[rows])


# --- ZeRO-1 ---------------------------------------------------------------------------------

class ShardedAdamW:
    """AdamW whose moments are split over the dp group (ZeRO stage 1).

    The local parameters, flattened end to end in order, are cut into dp equal chunks
    (the last padded); rank d keeps m and v of chunk d only: 2 x 4 x n / dp bytes instead
    of 2 x 4 x n. `step(lr, scale, grad_chunk)` updates chunk d of the parameters in place
    (each piece of a parameter with its own weight decay) and allgathers the chunks.
    """

    def __init__(self, base, comm):
        self.base, self.comm = base, comm                       # base: the AdamW it shards
        self.params = base.params
        self.t = base.t
        sizes = [p.size for _, p in self.params]
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.n = int(self.offsets[-1])
        self.chunk = -(-self.n // comm.size)
        lo, hi = comm.rank * self.chunk, min(self.n, (comm.rank + 1) * self.chunk)
        self.lo, self.hi = lo, hi
        # (name, param, start and stop inside the parameter, start inside the chunk)
        self.pieces = []
        for (name, p), start, stop in zip(self.params, self.offsets[:-1], self.offsets[1:]):
            a, b = max(lo, start), min(hi, stop)
            if a < b:
                self.pieces.append((name, p, int(a - start), int(b - start), int(a - lo)))
        dtype = self.params[0][1].dtype
        self.m = np.zeros(self.chunk, dtype)
        self.v = np.zeros(self.chunk, dtype)
        for name, _, a, b, at in self.pieces:                    # from the base's (restored) moments
            self.m[at:at + b - a] = np.asarray(base.m[name]).reshape(-1)[a:b]
            self.v[at:at + b - a] = np.asarray(base.v[name]).reshape(-1)[a:b]
        base.m, base.v = {}, {}                                  # the whole moments are freed

    def flat_gradients(self):
        flat = np.zeros(self.chunk * self.comm.size, self.params[0][1].dtype)
        for (_, p), start in zip(self.params, self.offsets[:-1]):
            if p.grad is not None:
                flat[start:start + p.size] = np.asarray(p.backend.to_numpy(p.grad)).reshape(-1)
        return flat

    def step(self, lr, grad_scale, grad_chunk):
        from .. import backends
        self.t += 1
        b = backends.get("cpu")
        for name, p, start, stop, at in self.pieces:
            g = grad_chunk[at:at + stop - start]
            if grad_scale != 1.0:
                g = b.mul(g, float(grad_scale))
            wd = self.base.weight_decay if self.base.decay[name] else 0.0
            b.adamw_update(p.data.reshape(-1)[start:stop], g, self.m[at:at + stop - start],
                           self.v[at:at + stop - start], float(lr), self.base.beta1,
                           self.base.beta2, self.base.eps, wd, self.t)
        mine = np.zeros(self.chunk, self.params[0][1].dtype)
        for _, p, start, stop, at in self.pieces:
            mine[at:at + stop - start] = p.data.reshape(-1)[start:stop]
        everything = self.comm.allgather(mine, "zero1 params")
        for (_, p), start in zip(self.params, self.offsets[:-1]):
            p.data.reshape(-1)[:] = everything[start:start + p.size]

    def zero_grad(self):
        for _, p in self.params:
            p.zero_grad()

    def state_bytes(self):
        return self.m.nbytes + self.v.nbytes

    def gathered_moments(self):
        """{name: (m, v)} of the local parameters, whole (collective over the dp group)."""
        m = self.comm.allgather(self.m, "checkpoint")
        v = self.comm.allgather(self.v, "checkpoint")
        return {name: (m[s:s + p.size].reshape(p.shape), v[s:s + p.size].reshape(p.shape))
                for (name, p), s in zip(self.params, self.offsets[:-1])}


# --- the trainer ----------------------------------------------------------------------------------

def _quiet(*args, **kwargs):
    pass


class DistributedTrainer(Trainer):
    """Trainer on one rank of a Grid: the single-process Trainer, with the model split after
    setup and the step, evaluation, samples and checkpoints made collective."""

    def __init__(self, config, grid, log=print):
        writer = grid.writer
        if not writer:
            config = dataclasses.replace(config, progress=False)
        super().__init__(config, log if writer else _quiet)
        self.grid, self.parallel = grid, grid.parallel
        self.writes_files = writer
        self.fault_step = int(os.environ.get("MICROGPT_FAULT_AT_STEP", "-1") or -1)

    # --- start-up: every rank builds the whole model, then keeps its piece ---------------------

    def parallelize(self):
        from .distributed_pp import Pipeline, stage_parameter_names
        from .distributed_tp import TensorParallel
        g, par, c = self.grid, self.parallel, self.config
        rows = c.batch_size // par.dp
        self.rows = slice(g.dp_index * rows, (g.dp_index + 1) * rows)
        full_optimizer = self.optimizer
        self.tp_plan = TensorParallel(g.tp).shard(self.model) if par.tp > 1 else None
        names = (stage_parameter_names(self.model, g.pp_index, par.pp) if par.pp > 1
                 else [n for n, _ in self.model.named_parameters()])
        current = dict(self.model.named_parameters())        # tied: under the table's name
        self.local = [(n, current[n]) for n in names]
        local_opt = AdamW(self.local, c.weight_decay, (c.beta1, c.beta2), c.eps, c.decay_embeddings)
        shard = self.tp_plan.shard_array if self.tp_plan else (lambda name, a: a)
        for name, _ in self.local:
            local_opt.m[name] = np.ascontiguousarray(shard(name, np.asarray(full_optimizer.m[name])))
            local_opt.v[name] = np.ascontiguousarray(shard(name, np.asarray(full_optimizer.v[name])))
        local_opt.t = full_optimizer.t
        self.optimizer = ShardedAdamW(local_opt, g.dp) if par.zero1 and par.dp > 1 else local_opt
        self.full_optimizer_bytes = sum(np.asarray(a).nbytes for a in
                                        list(full_optimizer.m.values()) + list(full_optimizer.v.values()))
        del full_optimizer
        self.pipeline = None
        if par.pp > 1:
            loss = self.tp_plan.loss if self.tp_plan else None
            self.pipeline = Pipeline(self.model, g.pp, par.micro_batches_for(rows), loss)
        # what the gradient norm counts on this rank: each element of the model once
        tied = {"transformer.wte.weight", "model.embed_tokens.weight"} if self.gpt_config.tie_embeddings else set()
        self.counted = {}
        for name, _ in self.local:
            whole_on_tp = self.tp_plan is None or name not in self.tp_plan.specs
            copy_on_last = par.pp > 1 and name in tied and g.pp_index != 0
            self.counted[name] = (not whole_on_tp or g.tp_index == 0) and not copy_on_last
        self.tied_name = next((n for n, _ in self.local if n in tied), None) if par.pp > 1 else None
        if c.dropout > 0 and g.dp_index > 0:          # each replica its own masks, deterministically
            for generator in self._generators():
                generator.bit_generator.state = generator.bit_generator.jumped(g.dp_index).state
        return self

    def _generators(self):
        from .trainer import model_generators
        return model_generators(self.model)

    # --- one optimizer step --------------------------------------------------------------------

    def train_step(self):
        c, g, par = self.config, self.grid, self.parallel
        if self.step == self.fault_step:
            raise RuntimeError(f"fault injected at step {self.step} (MICROGPT_FAULT_AT_STEP)")
        lr = lr_at(self.step, c.lr, c.min_lr, c.warmup_steps, c.max_steps)
        values = []
        for _ in range(c.grad_accum):
            x, y = local_batch(self.train_loader, self.rows)
            if self.pipeline is not None:
                values.append(self.pipeline.forward_backward(x, y))
            else:
                loss = self._micro_batch_loss(x, y)
                values.append(loss.item())
                loss.backward()
        reporter = g.pp_index == par.pp - 1 and g.tp_index == 0
        mine = np.mean(values) / par.dp if reporter else 0.0
        loss_value = float(g.world.allreduce(np.array([mine], np.float64), "scalars")[0])
        bad = None if math.isfinite(loss_value) else f"loss is {loss_value}"
        norm = float("nan")
        grad_chunk = None
        if bad is None:
            grad_chunk = self._sync_gradients()
            norm = self._grad_norm(grad_chunk)
            if not math.isfinite(norm):
                bad = f"gradient norm is {norm}"
        if bad is not None:
            self.optimizer.zero_grad()
            return self._skip(bad, lr)
        # g_sum = sum over replicas: one process's gradient is g_sum / dp
        mean_norm = norm / (c.grad_accum * par.dp)
        clip = min(1.0, c.grad_clip / mean_norm) if c.grad_clip > 0 and mean_norm > 0 else 1.0
        scale = clip / (c.grad_accum * par.dp)
        if isinstance(self.optimizer, ShardedAdamW):
            self.optimizer.step(lr, scale, grad_chunk)
        else:
            self.optimizer.step(lr, grad_scale=scale)
        self.optimizer.zero_grad()
        self.bad_streak = 0
        self.step += 1
        self.tokens_seen += c.tokens_per_step
        return {"step": self.step, "loss": loss_value, "lr": lr, "grad_norm": mean_norm}

    def _micro_batch_loss(self, x, y):
        """The trainer's batch_loss hook where it has one (fine-tuning's loss masks), else
        the model's loss."""
        hook = getattr(self, "batch_loss", None)
        return hook((x, y)) if hook is not None else self.model(x, y)[1]

    def _set_grad(self, p, array):
        p.grad, p._grad_owned = p.backend.asarray(np.ascontiguousarray(array), p.dtype), True

    def _sync_gradients(self):
        """Sum the gradients where several ranks hold pieces of one: tp's partial ones, the
        tied copies of a pipeline, the replicas. Returns the ZeRO-1 chunk, else None."""
        g, par = self.grid, self.parallel
        params = dict(self.local)
        if self.tp_plan is not None:
            for name in self.tp_plan.partial_grads:
                p = params[name]
                self._set_grad(p, g.tp.allreduce(p.backend.to_numpy(p.grad), "tp"))
        if self.tied_name is not None and g.embed is not None and g.embed.size > 1:
            p = params[self.tied_name]
            self._set_grad(p, g.embed.allreduce(p.backend.to_numpy(p.grad), "pp tied"))
        if par.dp == 1:
            return None
        if isinstance(self.optimizer, ShardedAdamW):
            return g.dp.reduce_scatter(self.optimizer.flat_gradients(), "zero1 grads")
        bucket, size = [], 0
        for _, p in self.local + [(None, None)]:
            if p is not None:
                bucket.append(p)
                size += p.size * p.dtype.itemsize
            if bucket and (p is None or size >= BUCKET_BYTES):
                flat = np.concatenate([np.asarray(q.backend.to_numpy(q.grad)).reshape(-1)
                                       if q.grad is not None else np.zeros(q.size, q.dtype)
                                       for q in bucket])
                flat = g.dp.allreduce(flat, "dp grads")
                at = 0
                for q in bucket:
                    self._set_grad(q, flat[at:at + q.size].reshape(q.shape))
                    at += q.size
                bucket, size = [], 0
        return None

    def _grad_norm(self, grad_chunk):
        g = self.grid
        total = 0.0
        if grad_chunk is not None:
            for name, _, start, stop, at in self.optimizer.pieces:
                if self.counted[name]:
                    piece = grad_chunk[at:at + stop - start].astype(np.float64)
                    total += float(np.dot(piece, piece))
        elif g.dp_index == 0:
            for name, p in self.local:
                if self.counted[name] and p.grad is not None:
                    flat = np.asarray(p.backend.to_numpy(p.grad), np.float64).reshape(-1)
                    total += float(np.dot(flat, flat))
        total = float(g.world.allreduce(np.array([total]), "scalars")[0])
        return math.sqrt(total) if math.isfinite(total) else float("nan")

    def optimizer_params(self):
        return [p for _, p in self.local]

    # --- evaluation and samples ----------------------------------------------------------------

    def evaluate(self):
        """As Trainer.evaluate, the rows of every val batch split over the replicas."""
        from ..tensor import no_grad
        c, g, par = self.config, self.grid, self.parallel
        batches = min(c.eval_batches, math.ceil(self.val_loader.num_windows / c.batch_size))
        self.val_loader.position = 0
        totals = np.zeros(3)                       # nats, tokens, bytes
        reporter = g.pp_index == par.pp - 1 and g.tp_index == 0
        self.model.eval()
        try:
            with no_grad():
                for _ in range(batches):
                    x, y = local_batch(self.val_loader, self.rows)
                    nbytes = self.byte_lengths[y]
                    y = np.where(nbytes > 0, y, -100)
                    count = int((nbytes > 0).sum())
                    if count == 0:
                        continue
                    if self.pipeline is not None:
                        loss = self.pipeline.forward_only(x, y, -100)
                    else:
                        loss = self.model(x, y, ignore_index=-100)[1].item()
                    if reporter:
                        totals += (loss * count, count, int(nbytes.sum()))
        finally:
            self.model.train()
        nats, tokens, nbytes = g.world.allreduce(totals, "scalars")
        if tokens == 0:
            return {"val_loss": float("nan"), "val_bpb": float("nan")}
        return {"val_loss": nats / tokens, "val_bpb": nats / math.log(2) / nbytes}

    def samples(self, count=None, max_new_tokens=None, seed=None):
        """Rank 0 samples from the gathered model (one process's GPT); the others return ""."""
        from ..nn import GPT
        weights, _ = self.gathered_tensors(moments=False)
        n = self.config.num_samples if count is None else count
        if not self.grid.writer:
            return [""] * n
        model = GPT(self.gpt_config, init=False)
        model.load_state_dict(weights)
        distributed, self.model = self.model, model
        try:
            return super().samples(count, max_new_tokens, seed)
        finally:
            self.model = distributed

    # --- checkpoints: the pieces gathered into the single-process format --------------------

    def gathered_tensors(self, moments=True):
        """({name: weight}, {exp_avg.name / exp_avg_sq.name: array}) of the whole model on
        rank 0, (None, None) elsewhere. Collective over the world."""
        from .distributed_tp import assemble
        g = self.grid
        local_moments = {}
        if moments:
            if isinstance(self.optimizer, ShardedAdamW):
                local_moments = self.optimizer.gathered_moments()
            else:
                local_moments = {n: (np.asarray(self.optimizer.m[n]), np.asarray(self.optimizer.v[n]))
                                 for n, _ in self.local}
        mine = None
        if g.dp_index == 0:
            specs = self.tp_plan.specs if self.tp_plan else {}
            mine = (g.tp_index, {n: (p.numpy(), local_moments.get(n), specs.get(n))
                                 for n, p in self.local})
        everything = g.world.gather_object(mine)
        if not g.writer:
            return None, None
        by_name = {}
        for tp_index, entries in sorted((e for e in everything if e is not None), key=lambda e: e[0]):
            for name, entry in entries.items():
                by_name.setdefault(name, {}).setdefault(tp_index, entry)
        weights, tensors = {}, {}
        for name, pieces in by_name.items():
            ordered = [pieces[i] for i in sorted(pieces)]
            weights[name] = assemble([(w, spec) for w, _, spec in ordered])
            if moments:
                tensors[f"exp_avg.{name}"] = assemble([(mv[0], spec) for _, mv, spec in ordered])
                tensors[f"exp_avg_sq.{name}"] = assemble([(mv[1], spec) for _, mv, spec in ordered])
        return weights, tensors

    def checkpoint_weights(self):
        """Collective: the pieces of weights and moments gathered to rank 0 (None elsewhere)."""
        weights, self._gathered_moments = self.gathered_tensors()
        return weights

    def checkpoint_moments(self):
        moments, self._gathered_moments = self._gathered_moments, None
        return moments

    def write_metrics(self, record):
        if self.writes_files:
            super().write_metrics(record)

    # --- what the benchmark reads ----------------------------------------------------------------

    def report(self):
        """Bytes sent by label, optimizer memory, the pipeline's bubble (this rank)."""
        state = (self.optimizer.state_bytes() if isinstance(self.optimizer, ShardedAdamW) else
                 sum(np.asarray(a).nbytes for a in list(self.optimizer.m.values()) + list(self.optimizer.v.values())))
        out = {"traffic": self.grid.traffic, "optimizer_bytes": int(state),
               "unsharded_optimizer_bytes": int(self.full_optimizer_bytes)}
        if self.pipeline is not None:
            out["bubble_measured"], out["bubble_textbook"] = self.pipeline.bubble()
        return out


# --- start-up agreement and the entry points ---------------------------------------------------

class _Agreed(Exception):
    """A start-up phase failed somewhere; `error` is set on the rank that reports it."""

    def __init__(self, error=None):
        super().__init__(str(error) if error else "failed on another rank")
        self.error = error


def _agree(grid_or_comm, phase):
    """Run phase() on every rank; if it raised a MicrogptError on any, raise _Agreed on all
    (carrying the error on the lowest rank that had one)."""
    comm = getattr(grid_or_comm, "world", grid_or_comm)
    error, result = None, None
    try:
        result = phase()
    except MicrogptError as exc:
        error = exc
    failed = [r for r, flag in enumerate(comm.allgather_object(error is not None)) if flag]
    if failed:
        raise _Agreed(error if comm.rank == failed[0] else None)
    return result


def _check_same_config(grid, config, resume_dir):
    """ConfigError if any rank was started with another config than rank 0's."""
    mine = {"config": config.to_dict(), "resume": resume_dir,
            "layout": dataclasses.asdict(grid.parallel)}
    everyone = grid.world.allgather_object(mine)
    for rank, theirs in enumerate(everyone):
        if theirs != everyone[0]:
            fields = sorted(k for k in set(theirs["config"]) | set(everyone[0]["config"])
                            if theirs["config"].get(k) != everyone[0]["config"].get(k))
            what = ", ".join(f"{k} ({theirs['config'].get(k)!r} vs {everyone[0]['config'].get(k)!r})"
                             for k in fields[:4]) or "--resume or the layout"
            raise ConfigError(f"rank {rank} was started with another config than rank 0: {what}; "
                              f"launch every rank with the same command")


def build(grid, config=None, resume_dir=None, overrides=None, log=print):
    """A DistributedTrainer ready to run on every rank of `grid`: a fresh run of `config`,
    or `resume_dir` continued (with run-control `overrides`). Raises _Agreed on failure."""
    resumed = path = None

    def configure():
        nonlocal config, resumed, path
        if resume_dir is not None:
            config, resumed, path = prepare_resume(resume_dir, overrides)
        else:
            _check_fresh_run_dir(config.out_dir)
        return config
    config = _agree(grid, configure)
    _agree(grid, lambda: _check_same_config(grid, config, resume_dir))
    trainer = DistributedTrainer(config, grid, log)

    def setup_if(rank_zero):
        if grid.writer == rank_zero:
            trainer.setup(resumed=resumed)
            if rank_zero and resumed is None and os.path.exists(trainer.metrics_path):
                os.remove(trainer.metrics_path)
    _agree(grid, lambda: setup_if(True))             # rank 0 prepares the data ...
    _agree(grid, lambda: setup_if(False))            # ... the others then reuse it
    _agree(grid, lambda: grid.parallel.check_model(config, trainer.gpt_config))
    if resumed is not None:
        _agree(grid, lambda: trainer.restore(resumed, path))
        trainer.log(f"resumed from {path} at step {trainer.step}")
    _agree(grid, trainer.parallelize)
    par = grid.parallel
    trainer.log(f"distributed: {grid.world.size} ranks = dp {par.dp} x tp {par.tp} x pp {par.pp}"
        + (", ZeRO-1" if par.zero1 and par.dp > 1 else "")
        + (f", {trainer.pipeline.micro_batches} micro-batches" if trainer.pipeline else ""))
    return trainer


def requested(args):
    """Whether `microgpt train` should run distributed: sizes given or started by mpirun."""
    return (launched_world_size() > 1 or any(getattr(args, k, None) not in (None, 1)
                                             for k in ("dp", "tp", "pp")) or bool(getattr(args, "zero1", False)))


def run_train(args, overrides):
    """`microgpt train` on this rank. Returns the summary on rank 0 and None elsewhere;
    raises what the CLI prints (once) or SystemExit with the status."""
    from .config import make_config
    parallel = ParallelConfig(dp=args.dp or 0, tp=args.tp or 1, pp=args.pp or 1,
                              zero1=bool(args.zero1), micro_batches=args.micro_batches or 0)
    if launched_world_size() == 1 and (parallel.dp or 1) * parallel.tp * parallel.pp > 1:
        raise DistributedError(f"--dp {parallel.dp or 1} --tp {parallel.tp} --pp {parallel.pp} "
                               f"asks for {(parallel.dp or 1) * parallel.tp * parallel.pp} processes "
                               f"but this is one process; launch it with `mpirun -n "
                               f"{(parallel.dp or 1) * parallel.tp * parallel.pp} microgpt train ...`")
    grid = connect(parallel)
    try:
        if args.resume:
            trainer = build(grid, resume_dir=args.resume, overrides=overrides)
        else:
            trainer = build(grid, config=_agree(grid, lambda: make_config(args.preset, args.config,
                                                                         overrides)))
        summary = trainer.run()
        grid.world.barrier()
        return summary if grid.writer else None
    except _Agreed as failure:
        if failure.error is not None:
            raise failure.error from None
        raise SystemExit(2) from None
    except (TrainingError, KeyboardInterrupt) as exc:   # every rank stops at the same step
        if grid.writer:
            raise
        raise SystemExit(2 if isinstance(exc, TrainingError) else 128 + getattr(exc, "signum", 2)) from None
    except BaseException as exc:                       # noqa: BLE001 - one rank's failure ends the job
        _abort(grid, exc)


def _abort(grid, exc):
    """Print this rank's error once and end every rank (MPI Abort): no rank waits forever
    for a message from this one."""
    where = f"rank {grid.world.rank} of {grid.world.size}"
    if isinstance(exc, MicrogptError):
        print(f"microgpt train: error ({where}): {exc}", file=sys.stderr)
        code = 2
    else:
        print(f"microgpt train: {where} failed:\n{''.join(traceback.format_exception(exc))}",
              file=sys.stderr)
        code = 1
    sys.stderr.flush()
    time.sleep(0.2)                                    # let the line reach mpirun first
    grid.world.mpi.Abort(code)

