"""The pre-training loop: batches in, AdamW steps, evaluation, samples, checkpoints out.

    summary = train(make_config("demo"))                 # what `microgpt train` runs
    summary = resume("runs/demo", {"eval_interval": 100})  # `microgpt train --resume runs/demo`

One optimizer step (step s counts from 0, `lr = lr_at(s, ...)`):

    for each of grad_accum micro-batches:  loss_k = CE(model(x_k), y_k);  backward
    g      = sum_k grad_k / grad_accum                      (the mean over micro-batches)
    scale  = min(1, grad_clip / ||g||)                      (global-norm clipping)
    AdamW(p, scale * g, lr)

Both factors are folded into one `grad_scale` handed to the optimizer. If a loss or the
gradient norm is NaN or infinite, the update is *skipped*: parameters and optimizer
moments stay as they were, the event is written to metrics.jsonl, and after
`max_bad_steps` consecutive skips the run stops with TrainingError (the last checkpoint,
written before the trouble, is untouched).

Every `eval_interval` steps and at the end: mean loss over `eval_batches` fixed val
batches, and bits per byte, bpb = sum of losses (nats) / ln 2 / bytes of the targets'
text, counting only tokens that stand for text (end-of-text targets are ignored), so the
figure compares across tokenizers. Every `log_interval` steps, and at the last step, a JSON
line with the mean loss since the previous one goes to RUN_DIR/metrics.jsonl (the run
directory's layout is checkpoint.py's). Progress: on a terminal a bar (on stderr) redraws
loss, lr, tokens/s and the ETA; when stderr is not a terminal (a log file, a pipe) a plain
line with the same figures is printed every `log_interval` steps instead, so a log holds
no carriage-return redraws. The final samples are printed and appended to samples.txt.

Determinism: the model's initial weights come from `seed`, batch order from the loader's
(seed, epoch) permutations, dropout masks from the model's own Generator. A checkpoint
stores all three states (plus AdamW's moments and step count), so `resume` continues bit
for bit: the losses and weights after N + N resumed steps equal those of 2N straight ones.
Evaluation and sampling never touch those states (eval mode, their own Generators).

Mixed precision (`dtype = "bf16"`, `--dtype bf16`, on `--device cuda` only): each step's
forward and backward (and evaluation) run inside backends/cuda_bf16.py's matmul_precision
scope, so the matrix products take bf16 copies of their operands (a weight's copy made once
a step) and accumulate in float32 on the tensor cores, as attention does at head size 64;
the weights, AdamW's moments, the
norms, softmax, the loss, the gradients and the checkpoints stay float32, and no loss
scaling is needed (bf16 has float32's exponent range).

Continuing from a model (`init_from`, `microgpt train --init-from PATH`: a run, a
checkpoint or a Hugging Face directory). The model is loaded as it is (train/checkpoint.py's
load_model: its architecture, weights and tokenizer), its tokenizer tokenizes the data,
and the run is otherwise fresh: step 0, AdamW's moments zero, the learning-rate schedule
from its start, dropout at this run's `dropout` with masks drawn from `seed`. So the first
logged loss is the loaded model's own loss on the first batch. Checkpoints of the run hold
the model's full GPTConfig (Qwen3's qk_norm and head_dim too), so `--resume` rebuilds it
from the checkpoint alone, never reading init_from again, and `microgpt convert` writes it
back to the model's Hugging Face type.

Stopping. Ctrl-C (SIGINT), and SIGTERM inside `stop_on_sigterm()` (the CLI's train command
runs in one), raise Interrupted, whose message names the step reached and the newest
complete checkpoint. A kill of any kind, even SIGKILL halfway through a save, leaves that
checkpoint intact; `resume` continues from it and first cuts metrics.jsonl back to its
step, since the lines logged after it will be logged again.
"""
import contextlib
import dataclasses
import math
import os
import signal
import sys
import time

import numpy as np

from ..errors import CheckpointError, ConfigError, MicrogptError
from ..nn.moe import RouterError
from . import checkpoint as ckpt
from .config import RUN_CONTROL_FIELDS, check_init_model, config_hash, from_dict
from .data import prepare_run_data
from .optim import AdamW, grad_norm
from .schedule import lr_at


class TrainingError(MicrogptError, RuntimeError):
    """Training cannot go on (repeated NaN/inf losses); the message says what to try."""


class Interrupted(KeyboardInterrupt):
    """A signal stopped the run; the message (if any) says where it stands and how to go on.

    A KeyboardInterrupt, so code that handles Ctrl-C handles a SIGTERM the same way.
    """

    def __init__(self, signal_name="SIGINT", message=None):
        super().__init__(message or f"interrupted by {signal_name}")
        self.signal_name = signal_name
        self.signum = int(getattr(signal, signal_name))


@contextlib.contextmanager
def stop_on_sigterm():
    """Within the block, SIGTERM raises Interrupted("SIGTERM"), as Ctrl-C raises
    KeyboardInterrupt: a `kill` then stops training the same way and says so, instead of
    ending the process silently. (Only the main thread may set handlers; elsewhere this is
    a no-op.) The newest complete checkpoint is safe either way: saves are atomic.
    """
    def raise_interrupted(signum, frame):
        raise Interrupted("SIGTERM")
    try:
        previous = signal.signal(signal.SIGTERM, raise_interrupted)
    except ValueError:                             # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def gpt_config(config, vocab_size):
    from ..nn import GPTConfig
    return GPTConfig(family=config.family, vocab_size=vocab_size, block_size=config.block_size,
                     n_layer=config.n_layer, n_head=config.n_head,
                     n_kv_head=config.n_kv_head or None, n_embd=config.n_embd,
                     dropout=config.dropout, bias=config.bias,
                     tie_embeddings=config.tie_embeddings, **moe_fields(config))


def moe_fields(config):
    """The GPTConfig mixture-of-experts fields of a TrainConfig (nn/moe.py); moe_hidden 0
    means GPTConfig's default, the dense MLP's hidden size."""
    return {"n_experts": config.n_experts, "n_experts_per_token": config.n_experts_per_token,
            "n_shared_experts": config.n_shared_experts, "moe_every": config.moe_every,
            "moe_hidden": config.moe_hidden or None, "moe_norm_topk_prob": config.moe_norm_topk_prob,
            **router_coefficients(config)}


def router_coefficients(config):
    """The router losses' weights: training settings, applied to a loaded model too."""
    return {"router_aux_loss_coef": config.router_aux_loss_coef,
            "router_z_loss_coef": config.router_z_loss_coef}


def router_summary(window):
    """The metrics.jsonl keys of the router statistics of a log window's micro-batches
    (GPT.router_stats() of each): tokens_per_expert summed per MoE layer; the expert load as
    max and min over layers and experts of count / mean count (1.0 = perfectly even); the
    mean aux and z losses; dropped tokens (0: routing is dropless). {} for a dense model."""
    if not window:
        return {}
    layers = [np.sum([w["tokens_per_expert"][i] for w in window], axis=0)
              for i in range(len(window[0]["tokens_per_expert"]))]
    load = [counts / max(counts.mean(), 1e-12) for counts in layers]
    out = {"tokens_per_expert": [[int(c) for c in counts] for counts in layers],
           "expert_load_max": float(max(x.max() for x in load)),
           "expert_load_min": float(min(x.min() for x in load)),
           "dropped_tokens": int(sum(w["dropped_tokens"] for w in window))}
    for name in ("aux_loss", "z_loss"):
        values = [w[name] for w in window if name in w]
        if values:
            out["router_" + name] = float(np.mean(values))
    return out


def model_generators(model):
    """The NumPy Generators the model draws from (dropout masks), each once, in a fixed order."""
    found, seen = [], set()
    for _, module in model.named_modules():
        rng = getattr(module, "rng", None)
        if isinstance(rng, np.random.Generator) and id(rng) not in seen:
            seen.add(id(rng))
            found.append(rng)
    return found


def token_byte_lengths(tokenizer):
    """(V,) int64: UTF-8 bytes each id stands for; 0 for special tokens."""
    lengths = np.zeros(tokenizer.vocab_size, dtype=np.int64)
    for i in range(tokenizer.vocab_size):
        lengths[i] = len(tokenizer.token_bytes(i))
    for i in tokenizer.special_tokens.values():
        lengths[i] = 0
    return lengths


class Trainer:
    # False on the ranks of a distributed run other than rank 0 (train/distributed.py):
    # they train but write no metrics, samples or checkpoints.
    writes_files = True

    def __init__(self, config, log=print):
        self.config, self.log = config, log
        self.run_dir = config.out_dir
        self.step = 0
        self.bad_streak = 0
        self.elapsed_before = 0.0                  # wall seconds of earlier sessions
        self.tokens_seen = 0
        self.last = {}                              # latest logged metrics
        # losses and gradient norms since the last metrics line: a checkpoint keeps them, so
        # a log window that spans a checkpoint averages the same steps after a resume
        # (and an MoE model's router statistics of each micro-batch: router_summary)
        self.window = {"loss": [], "grad_norm": [], "router": []}

    # --- setup -------------------------------------------------------------------------------

    def setup(self, resumed=None):
        """Data, tokenizer, model and optimizer. resumed: the Checkpoint `resume` continues;
        for an init_from run its model config and tokenizer are the run's (the weights come
        in `restore`), so the model it started from is not read again."""
        from .. import backends
        from ..data.loader import DataLoader
        from ..nn import GPT
        c = self.config
        backends.get(c.device)                     # fail early if the device has no backend
        init_model, init_tokenizer = self._init_model(resumed) if c.init_from else (None, None)
        os.makedirs(self.run_dir, exist_ok=True)
        data_dir = c.data_dir or os.path.join(self.run_dir, "data")
        # redrawn bars only on a terminal: in a log file each redraw would be another line
        self.live_progress = c.progress and _is_terminal(sys.stderr)
        self.tokenizer, self.tokenizer_path, self.meta = prepare_run_data(
            dataclasses.replace(c, progress=self.live_progress), data_dir, self.log,
            tokenizer=init_tokenizer)
        V = self.tokenizer.vocab_size              # the data's ids; the model may have more rows
        if init_model is not None:
            self.model, self.gpt_config = init_model, init_model.config
        else:
            self.gpt_config = gpt_config(c, V) if not c.init_from else self._resumed_gpt
            self.model = GPT(self.gpt_config, seed=c.seed)
        if c.device != "cpu":
            self.model.to(c.device)
        self.optimizer = AdamW(self.model.named_parameters(), c.weight_decay, (c.beta1, c.beta2),
                               c.eps, c.decay_embeddings)
        self.train_loader = DataLoader(data_dir, "train", c.batch_size, c.block_size, c.seed,
                                       shuffle=True, vocab_size=V)
        self.val_loader = DataLoader(data_dir, "val", c.batch_size, c.block_size, c.seed,
                                     shuffle=False, vocab_size=V)
        self.byte_lengths = token_byte_lengths(self.tokenizer)
        self.metrics_path = ckpt.metrics_path(self.run_dir)
        n = self.model.num_parameters()
        self.log(f"model: {c.family} {c.n_layer} layers x {c.n_embd} channels, {c.n_head} heads, "
                 f"context {c.block_size}, vocab {self.gpt_config.vocab_size}: {n / 1e6:.2f}M "
                 f"parameters; {c.tokens_per_step:,} tokens per step, {c.max_steps} steps"
                 + (f"; initialized from {c.init_from}" if c.init_from else ""))
        return self

    def _init_model(self, resumed):
        """(GPT or None, tokenizer) of an init_from run: the loaded model, ready to train
        (dropout and its masks this run's), or, resuming, None and the checkpoint's
        tokenizer, its GPTConfig kept for setup."""
        from ..nn import GPTConfig
        from ..nn.layers import Dropout
        c = self.config
        if resumed is not None:
            self._resumed_gpt = GPTConfig(**resumed.gpt)
            check_init_model(c, self._resumed_gpt)
            return None, resumed.tokenizer
        model, tokenizer, _ = ckpt.load_model(c.init_from)
        check_init_model(c, model.config)
        if tokenizer.eot_id is None:
            raise ConfigError(f"init_from {c.init_from}: its tokenizer has no end-of-text token "
                              f"(an eos_token or <|endoftext|>), which separates the documents of "
                              f"the training data")
        model.config.dropout = c.dropout
        for name, value in router_coefficients(c).items():      # this run's loss weights
            setattr(model.config, name, value)
        for _, module in model.named_modules():
            if isinstance(module, Dropout):
                module.p = float(c.dropout)
        for generator in model_generators(model):     # masks from this run's seed
            generator.bit_generator.state = np.random.default_rng(c.seed).bit_generator.state
        return model.train(), tokenizer

    # --- one optimizer step --------------------------------------------------------------------

    def train_step(self):
        c = self.config
        lr = lr_at(self.step, c.lr, c.min_lr, c.warmup_steps, c.max_steps)
        losses, bad = [], None
        with self.matmul_precision():          # forward and backward; the update stays float32
            for _ in range(c.grad_accum):
                batch = self.train_loader.next_batch()
                if bad is not None:
                    continue                   # keep the data stream aligned, skip the work
                try:
                    loss = self.batch_loss(batch)
                except RouterError as exc:
                    raise self._router_diverged(exc) from exc
                self._note_router()
                value = loss.item()
                if not math.isfinite(value):
                    bad = f"loss is {value}"
                    continue
                loss.backward()
                losses.append(value)
        norm = float("nan")
        if bad is None:
            norm = grad_norm(self.optimizer_params())
            if not math.isfinite(norm):
                bad = f"gradient norm is {norm}"
        if bad is not None:
            self.optimizer.zero_grad()
            return self._skip(bad, lr)
        mean_norm = norm / c.grad_accum
        clip = min(1.0, c.grad_clip / mean_norm) if c.grad_clip > 0 and mean_norm > 0 else 1.0
        self.optimizer.step(lr, grad_scale=clip / c.grad_accum)
        self.optimizer.zero_grad()
        self.bad_streak = 0
        self.step += 1
        self.tokens_seen += c.tokens_per_step
        return {"step": self.step, "loss": float(np.mean(losses)), "lr": lr,
                "grad_norm": mean_norm}

    def matmul_precision(self):
        """The scope of a step's forward and backward (and of evaluation): with --dtype bf16 the
        cuda backend's matrix products take bf16 operands (backends/cuda_bf16.py), everything
        else (weights, AdamW, norms, softmax, the loss, checkpoints) stays float32."""
        if self.config.dtype == "float32":
            return contextlib.nullcontext()
        from ..backends import cuda_bf16
        return cuda_bf16.matmul_precision(self.config.dtype)

    def batch_loss(self, batch):
        """The loss of one micro-batch (a hook: fine-tuning's batches carry a loss mask)."""
        x, y = batch
        return self.model(x, y)[1]

    def _note_router(self):
        """Keep the micro-batch's router statistics (an MoE model) for the next metrics line."""
        router_stats = getattr(self.model, "router_stats", None)
        stats = router_stats() if router_stats else None
        if stats is not None:
            self.window["router"].append(stats)

    def _router_diverged(self, exc):
        """RouterError naming the step the router's probabilities went NaN/inf at."""
        last = ckpt.latest(self.run_dir)
        return RouterError(f"step {self.step + 1}: {exc} (--lr, --router-z-loss-coef) in a new run; "
                           f"the last good checkpoint is {last or '(none written yet)'}")

    def optimizer_params(self):
        return [p for _, p in self.optimizer.params]

    def _skip(self, reason, lr):
        c = self.config
        self.bad_streak += 1
        self.step += 1
        self.tokens_seen += c.tokens_per_step
        event = {"step": self.step, "event": "skipped_update", "reason": reason, "lr": lr,
                 "consecutive": self.bad_streak}
        self.write_metrics(event)
        self.log(f"step {self.step}: {reason}; update skipped ({self.bad_streak} in a row)")
        if self.bad_streak >= c.max_bad_steps:
            last = ckpt.latest(self.run_dir)
            raise TrainingError(
                f"the loss or gradient was NaN/inf for {self.bad_streak} consecutive steps "
                f"(last at step {self.step}); stopping. The last good checkpoint is "
                f"{last or '(none written yet)'}. Try a lower --lr, a longer --warmup-steps "
                f"or --grad-clip 1.0, then --resume {self.run_dir}")
        return event

    # --- evaluation and samples ----------------------------------------------------------------

    def evaluate(self):
        """{"val_loss", "val_bpb"} over eval_batches fixed val batches (eval mode, no grad)."""
        from ..tensor import no_grad
        c = self.config
        batches = min(c.eval_batches, math.ceil(self.val_loader.num_windows / c.batch_size))
        self.val_loader.position = 0
        total_nats, total_tokens, total_bytes = 0.0, 0, 0
        self.model.eval()
        try:
            with no_grad(), self.matmul_precision():
                for _ in range(batches):
                    x, y = self.val_loader.next_batch()
                    nbytes = self.byte_lengths[y]
                    y = np.where(nbytes > 0, y, -100)          # special tokens: not text
                    count = int((nbytes > 0).sum())
                    if count == 0:
                        continue
                    _, loss = self.model(x, y, ignore_index=-100)
                    total_nats += loss.item() * count
                    total_tokens += count
                    total_bytes += int(nbytes.sum())
        finally:
            self.model.train()
        if total_tokens == 0:
            return {"val_loss": float("nan"), "val_bpb": float("nan")}
        return {"val_loss": total_nats / total_tokens,
                "val_bpb": total_nats / math.log(2) / total_bytes}

    def samples(self, count=None, max_new_tokens=None, seed=None):
        from ..inference.engine import Engine
        from ..inference.sampling import SamplingConfig
        c = self.config
        engine = Engine(self.model, self.tokenizer)
        prompts = [[self.tokenizer.eot_id]] * (c.num_samples if count is None else count)
        room = c.block_size - 1
        outs = engine.generate(prompts, min(max_new_tokens or c.sample_tokens, room),
                               SamplingConfig(temperature=c.temperature, top_k=c.top_k,
                                              repetition_penalty=c.repetition_penalty),
                               seed=c.seed + self.step if seed is None else seed)
        return [o.text for o in outs]

    # --- metrics and checkpoints ---------------------------------------------------------------

    def write_metrics(self, record):
        ckpt.append_metrics(self.run_dir, record)

    def checkpoint_moments(self):
        """AdamW's moments to save (a distributed run gathers its pieces: train/distributed.py)."""
        return self.optimizer.state_tensors()

    def save_checkpoint(self, elapsed):
        c = self.config
        state = {"step": self.step, "optimizer_t": self.optimizer.t,
                 "bad_streak": self.bad_streak, "tokens_seen": self.tokens_seen,
                 "elapsed_s": elapsed,
                 "rng": [g.bit_generator.state for g in model_generators(self.model)],
                 "loaders": {"train": self.train_loader.state_dict(),
                             "val": self.val_loader.state_dict()},
                 "config": c.to_dict(), "config_hash": config_hash(c),
                 "data_key": self.meta.get("data_key"), "metrics": self.last,
                 "log_window": self.window, **self.extra_trainer_state()}
        generation = {"temperature": c.temperature, "top_k": c.top_k,
                      "repetition_penalty": c.repetition_penalty,
                      "max_new_tokens": c.sample_tokens}
        weights, moments = self.checkpoint_weights(), self.checkpoint_moments()
        if not self.writes_files:          # a distributed run's other ranks: rank 0 writes
            return None
        checkpoint = ckpt.Checkpoint(self.step, self.gpt_config.to_dict(), weights,
                                     self.tokenizer, generation, state,
                                     moments, self.checkpoint_files())
        return ckpt.save(self.run_dir, checkpoint, keep=c.keep_checkpoints)

    # Hooks for trainers built on this one (finetune/sft.py): what a checkpoint holds besides
    # the defaults. Weights: {name: array} for model.safetensors; files: {name: writer(path)}
    # written into the checkpoint directory (and listed in COMPLETE); state: more JSON keys.
    def checkpoint_weights(self):
        return self.model.state_dict()

    def checkpoint_files(self):
        return {}

    def extra_trainer_state(self):
        return {}

    def load_checkpoint(self, path):
        """Restore model, optimizer, loaders and RNGs from a checkpoint made by this config."""
        return self.restore(ckpt.load(path), path)

    def restore(self, checkpoint, path):
        """Continue from a loaded Checkpoint (read from `path`); returns its trainer state.

        metrics.jsonl is cut back to the checkpoint's step: what was logged after it will
        be logged again."""
        state = checkpoint.trainer_state
        if state.get("data_key") != self.meta.get("data_key"):
            raise CheckpointError(f"{path}: the checkpoint was trained on other data (data key "
                                  f"{state.get('data_key')} vs {self.meta.get('data_key')})")
        # Compare resolved configs: a checkpoint written before GPTConfig gained a field lacks
        # its key, which means the field's default (the model it describes is the same).
        from ..nn import GPTConfig
        try:
            saved_gpt = GPTConfig(**checkpoint.gpt).to_dict()
        except (TypeError, ConfigError) as exc:
            raise CheckpointError(f"{path}/config.json: the model config cannot be read ({exc})") from exc
        if saved_gpt != self.gpt_config.to_dict():
            raise CheckpointError(f"{path}: model config {checkpoint.gpt} does not match this "
                                  f"run's {self.gpt_config.to_dict()}")
        self.model.load_state_dict(checkpoint.weights)
        self.optimizer.load_state_tensors(checkpoint.optimizer, state["optimizer_t"])
        self.train_loader.load_state_dict(state["loaders"]["train"])
        self.val_loader.load_state_dict(state["loaders"]["val"])
        generators = model_generators(self.model)
        if len(generators) != len(state["rng"]):
            raise CheckpointError(f"{path}: {len(state['rng'])} RNG states for "
                                  f"{len(generators)} generators")
        for g, s in zip(generators, state["rng"]):
            g.bit_generator.state = s
        self.step, self.bad_streak = state["step"], state["bad_streak"]
        self.tokens_seen, self.elapsed_before = state["tokens_seen"], state["elapsed_s"]
        self.last = state.get("metrics", {})
        window = state.get("log_window", {})          # absent in checkpoints of older versions
        self.window = {k: list(window.get(k, [])) for k in ("loss", "grad_norm", "router")}
        if self.writes_files:
            ckpt.cut_metrics(self.run_dir, self.step)
        return state

    # --- the loop ------------------------------------------------------------------------------

    def run(self, stop_at_step=None):
        """Train to max_steps (or stop after stop_at_step, as a kill would); returns a summary.

        Ctrl-C (SIGINT), and SIGTERM within `stop_on_sigterm()`, raise Interrupted, whose
        message names the step reached and the newest complete checkpoint to resume from.
        """
        try:
            return self._run(stop_at_step)
        except KeyboardInterrupt as exc:
            raise self._interrupted(getattr(exc, "signal_name", "SIGINT")) from None

    def _interrupted(self, signal_name):
        newest = ckpt.latest(self.run_dir)
        if newest is None:
            where = ("no checkpoint was written yet, so there is nothing to resume: run the "
                     "same `microgpt train` command again")
        else:
            where = (f"newest complete checkpoint: {newest}; continue with "
                     f"`microgpt train --resume {self.run_dir}`")
        return Interrupted(signal_name, f"interrupted by {signal_name} at step {self.step}; {where}")

    def _run(self, stop_at_step):
        from tqdm import tqdm
        c = self.config
        start_step, start = self.step, time.perf_counter()
        step_time, window = 0.0, self.window
        elapsed = lambda: self.elapsed_before + time.perf_counter() - start   # noqa: E731
        bar = tqdm(total=c.max_steps, initial=self.step, unit="step", desc="training",
                   dynamic_ncols=True, disable=not self.live_progress)
        say = bar.write if self.live_progress else self.log
        plain_progress = c.progress and not self.live_progress
        try:
            while self.step < c.max_steps:
                t = time.perf_counter()
                record = self.train_step()
                step_time += time.perf_counter() - t
                tokens_per_s = (self.step - start_step) * c.tokens_per_step / step_time
                if "loss" in record:
                    window["loss"].append(record["loss"])
                    window["grad_norm"].append(record["grad_norm"])
                    bar.set_postfix_str(f"loss {record['loss']:.3f} lr {record['lr']:.2e} "
                                        f"{tokens_per_s:,.0f} tok/s")
                bar.update(1)
                # a metrics line per log_interval steps, and one for the last, partial window
                log_now = self.step % c.log_interval == 0 or self.step == c.max_steps
                if log_now and window["loss"]:
                    self.last = {"step": self.step, "loss": float(np.mean(window["loss"])),
                                 "lr": record["lr"],
                                 "grad_norm": float(np.mean(window["grad_norm"])),
                                 "tokens": self.tokens_seen, "tokens_per_s": tokens_per_s,
                                 "elapsed_s": elapsed(), **router_summary(window["router"])}
                    self.write_metrics(self.last)
                    for values in window.values():
                        values.clear()
                    if plain_progress:
                        eta = (c.max_steps - self.step) * step_time / (self.step - start_step)
                        say(f"step {self.step}/{c.max_steps}: loss {self.last['loss']:.4f}, "
                            f"lr {record['lr']:.2e}, {tokens_per_s:,.0f} tokens/s, "
                            f"ETA {_clock(eta)}")
                if self.step % c.eval_interval == 0 or self.step == c.max_steps:
                    result = self.evaluate()
                    self.write_metrics({"step": self.step, **result, "elapsed_s": elapsed()})
                    self.last.update(result)
                    say(f"step {self.step}: val loss {result['val_loss']:.4f}, "
                        f"{result['val_bpb']:.3f} bits/byte")
                if c.sample_interval and self.step % c.sample_interval == 0:
                    text = self.samples(count=1)[0]
                    self.write_metrics({"step": self.step, "sample": text})
                    say(f"step {self.step} sample: {text!r}")
                if self.step % c.checkpoint_interval == 0 or self.step == c.max_steps:
                    self.save_checkpoint(elapsed())
                if stop_at_step is not None and self.step >= stop_at_step:
                    break
        finally:
            bar.close()
        finished = self.step >= c.max_steps
        steps_run = self.step - start_step
        # a resumed run that was already finished trained nothing: no new samples to draw
        samples = self.samples() if finished and steps_run and c.num_samples else []
        if samples and self.writes_files:
            ckpt.append_samples(self.run_dir, self.step, samples)
        return {"steps": self.step, "steps_run": steps_run, "max_steps": c.max_steps,
                "samples": samples, "train_loss": self.last.get("loss"),
                "val_loss": self.last.get("val_loss"), "val_bpb": self.last.get("val_bpb"),
                "tokens_per_s": steps_run * c.tokens_per_step / step_time if steps_run else None,
                "wall_s": elapsed(), "run_dir": self.run_dir,
                "checkpoint": ckpt.latest(self.run_dir), "finished": finished}


def _is_terminal(stream):
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def _clock(seconds):
    """h:mm:ss, or m:ss under an hour."""
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def format_summary(summary):
    """The end-of-run lines `microgpt train` prints: only figures that were measured."""
    known = []
    if summary["train_loss"] is not None:
        known.append(f"train loss {summary['train_loss']:.4f}")
    if summary["val_loss"] is not None:
        known.append(f"val loss {summary['val_loss']:.4f}")
    if summary["val_bpb"] is not None:
        known.append(f"{summary['val_bpb']:.3f} bits/byte")
    figures = ", ".join(known) or "no loss measured yet"
    steps, steps_run = summary["steps"], summary["steps_run"]
    if steps_run == 0 and summary["finished"]:
        head = (f"no steps run: the checkpoint is already at max_steps ({summary['max_steps']}); "
                f"training longer needs a new run with a larger --max-steps (the learning-rate "
                f"schedule depends on it). At step {steps}: {figures}")
    else:
        now = "" if steps_run == steps else f" ({steps_run} of them now)"
        head = (f"{steps} steps in {summary['wall_s']:.0f}s{now} at "
                f"{summary['tokens_per_s']:,.0f} tokens/s; {figures}")
    return f"{head}\ncheckpoint: {summary['checkpoint'] or 'none written'}"


def _check_fresh_run_dir(run_dir):
    if ckpt.list_complete(run_dir):
        raise ConfigError(f"{run_dir} already holds checkpoints; continue it with "
                          f"`microgpt train --resume {run_dir}`, or pick another --out-dir "
                          f"(or delete {run_dir})")


def train(config, log=print, stop_at_step=None):
    """Train a fresh run from a TrainConfig; returns the run's summary dict."""
    _check_fresh_run_dir(config.out_dir)
    trainer = Trainer(config, log).setup()
    if os.path.exists(trainer.metrics_path):
        os.remove(trainer.metrics_path)
    return trainer.run(stop_at_step=stop_at_step)


def prepare_resume(run_dir, overrides=None):
    """(config, Checkpoint, its path) for continuing run_dir's newest complete checkpoint:
    what `resume` (and a distributed resume) starts from."""
    path = ckpt.resolve(run_dir)
    if os.path.abspath(path) == os.path.abspath(run_dir):          # given a checkpoint itself
        run_dir = os.path.dirname(os.path.dirname(os.path.abspath(path)))
    checkpoint = ckpt.load(path)
    state = checkpoint.trainer_state
    if not isinstance(state.get("config"), dict):
        raise CheckpointError(f"{path}/trainer_state.json: no training config; the checkpoint "
                              f"cannot be resumed")
    saved = from_dict(state["config"])
    if config_hash(saved) != state.get("config_hash"):
        raise CheckpointError(f"{path}: trainer_state.json's config does not match its hash")
    overrides = dict(overrides or {})
    overrides["out_dir"] = run_dir
    config = dataclasses.replace(saved, **overrides)
    changed = sorted(k for k in overrides if k not in RUN_CONTROL_FIELDS
                     and getattr(saved, k) != getattr(config, k))
    if changed:
        raise ConfigError(f"cannot resume with changed {', '.join(changed)}: these fields change "
                          f"what training computes; start a new run instead")
    return config, checkpoint, path


def resume(run_dir, overrides=None, log=print, stop_at_step=None):
    """Continue the newest complete checkpoint of run_dir, bit for bit.

    overrides may change run-control fields (eval/log/checkpoint intervals ...) freely;
    changing a field that alters the computation is a ConfigError naming the fields.
    """
    config, checkpoint, path = prepare_resume(run_dir, overrides)
    trainer = Trainer(config, log).setup(resumed=checkpoint)
    trainer.restore(checkpoint, path)
    log(f"resumed from {path} at step {trainer.step}")
    return trainer.run(stop_at_step=stop_at_step)
