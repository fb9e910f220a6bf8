"""Supervised fine-tuning: the pre-training Trainer, fed chat batches with a loss mask.

    summary = finetune(make_config(overrides={"init_from": "runs/demo", "data": "train.jsonl",
                                              "out_dir": "runs/sft"}), SFTOptions(lora_rank=8))
    summary = resume_sft("runs/sft")                 # bit for bit, like `microgpt train --resume`

SFTTrainer is train/trainer.py's Trainer with four things replaced, through its hooks:

  data      the JSONL conversations (finetune/data.py), tokenized with the chat template,
            in padded or packed batches (finetune/packing.py) whose targets are IGNORE
            except on the assistant's tokens: batch_loss runs cross_entropy with
            ignore_index, so the loss is the mean over assistant tokens only
  model     init_from's model (a run, a checkpoint or a Hugging Face directory) with its
            vocabulary grown when the tokenizer needed <|im_start|>/<|im_end|>
            (finetune/vocab.py); full fine-tuning trains every parameter, --lora-rank > 0
            wraps the targets (finetune/lora.py) and trains the adapters only, --qlora
            int8|int4 stores the frozen base of the blocks quantized (finetune/qlora.py)
  evaluate  mean masked loss over the held-out conversations (val_data, else a val_fraction
            of the training file drawn by seed), and bits per byte of the assistant's text
  samples   the model's replies to the first held-out prompts, stopped at <|im_end|>

Checkpoints are the trainer's: model.safetensors holds the base weights (for LoRA the frozen
base, for full fine-tuning the trained model), so `generate`, `convert` and `inspect` read
it; a LoRA run adds its adapter in PEFT's format (adapter_config.json and
adapter_model.safetensors, finetune/peft_io.py) beside it, which `microgpt chat` applies
(load_chat_model) and PEFT loads. trainer_state.json holds the SFT options and their hash,
the loaders' (epoch, position) and the RNG states, so resume_sft continues bit for bit.
(A QLoRA run's model.safetensors holds the base as the floats its codes stand for, the
model the adapters were trained over, and qlora_base.safetensors the codes themselves, which
a resume loads back: this too resumes exactly.)
"""
import dataclasses
import hashlib
import json
import math
import os
from dataclasses import dataclass

import numpy as np

from ..errors import CheckpointError, ConfigError
from ..train import checkpoint as ckpt
from ..train.config import config_hash, from_dict
from ..train.optim import AdamW
from ..train.trainer import Trainer
from . import data as chat_data
from . import lora as lora_lib
from . import packing, peft_io, qlora, tokens
from .vocab import resize_vocabulary


@dataclass
class SFTOptions:
    val_data: str = ""                 # a JSONL of held-out conversations; "" = split the data
    lora_rank: int = 0                 # 0 = full fine-tuning
    lora_alpha: float = 16.0
    lora_targets: str = "q,v"
    lora_dropout: float = 0.0
    qlora: str = ""                    # "" | int8 | int4: the base under the adapters
    qlora_group: int = 0               # inputs per scale; 0 = int8 one per row, int4 32
    packing: bool = False              # several conversations per row, document-masked
    overflow: str = "truncate"         # a conversation longer than the context: truncate | drop

    def __post_init__(self):
        if not isinstance(self.lora_rank, int) or self.lora_rank < 0:
            raise ConfigError(f"lora_rank must be an integer >= 0, got {self.lora_rank!r}")
        if self.qlora is True:             # `--qlora` alone, and runs of before int4: int8
            self.qlora = "int8"
        elif self.qlora is False or self.qlora is None:
            self.qlora = ""
        if self.qlora not in ("",) + qlora.SCHEMES:
            raise ConfigError(f"--qlora takes int8 or int4, got {self.qlora!r}")
        if not isinstance(self.qlora_group, int) or self.qlora_group < 0:
            raise ConfigError(f"qlora_group must be an integer >= 0, got {self.qlora_group!r}")
        if self.qlora_group and not self.qlora:
            raise ConfigError("--qlora-group sets the scales of a quantized base; give --qlora too")
        if self.qlora and not self.lora_rank:
            raise ConfigError(f"--qlora trains LoRA adapters over an {self.qlora} base; "
                              f"give --lora-rank too")
        if self.overflow not in chat_data.OVERFLOW:
            raise ConfigError(f"overflow must be truncate or drop, got {self.overflow!r}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ConfigError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        self.hash = options_hash(self)

    def to_dict(self):
        return {k: v for k, v in dataclasses.asdict(self).items()}


def options_hash(options):
    payload = {k: getattr(options, k) for k in SFTOptions.__dataclass_fields__}
    # runs made before int4 hashed qlora as a bool (True: int8, one scale per row) and had
    # no qlora_group: the same options hash as they did, so those runs still resume
    if payload["qlora_group"] == 0:
        del payload["qlora_group"]
        payload["qlora"] = {"": False, "int8": True}.get(payload["qlora"], payload["qlora"])
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _file_sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


class SFTTrainer(Trainer):
    def __init__(self, config, options, log=print):
        super().__init__(config, log)
        self.options = options

    # --- setup -------------------------------------------------------------------------------

    def setup(self, resumed=None):
        from .. import backends
        from ..nn import GPT, GPTConfig
        from ..tokenizer.chat import with_chat_tokens
        c, o = self.config, self.options
        backends.get(c.device)
        if not c.init_from:
            raise ConfigError("fine-tuning starts from a model: give --init-from RUN_OR_HF_DIR")
        if resumed is not None:                            # the checkpoint's model and tokenizer
            self.tokenizer = resumed.tokenizer
            model = GPT(GPTConfig(**resumed.gpt), init=False)
            model.load_state_dict({k: v for k, v in resumed.weights.items()})
            self._set_dropout(model)
            self.new_token_ids = list(resumed.trainer_state.get("new_token_ids", []))
        else:
            model, tokenizer = self._init_model(None)
            self.tokenizer, added = with_chat_tokens(tokenizer)
            self.new_token_ids = [self.tokenizer.special_tokens[a] for a in added]
            if added:
                self.log(f"tokenizer: added {', '.join(added)} as ids "
                         f"{', '.join(map(str, self.new_token_ids))}"
                         + ("; the model's vocabulary grows with mean-initialized rows"
                            if self.tokenizer.vocab_size > model.config.vocab_size else ""))
            if self.tokenizer.vocab_size > model.config.vocab_size:
                resize_vocabulary(model, self.tokenizer.vocab_size)
        if c.block_size > model.config.block_size:
            raise ConfigError(f"block_size {c.block_size} exceeds the model's context "
                              f"{model.config.block_size}")
        if o.lora_rank:
            modules = lora_lib.target_modules(model.config, o.lora_targets)
            wrapped = lora_lib.apply_lora(model, modules, o.lora_rank, o.lora_alpha, o.lora_dropout,
                                          seed=c.seed)
            self.log(f"LoRA rank {o.lora_rank}, alpha {o.lora_alpha:g} on {len(wrapped)} layers "
                     f"({o.lora_targets})")
            if self.new_token_ids:        # else nothing could learn to read or emit them
                tokens.train_token_rows(model, self.new_token_ids)
                self.log(f"LoRA: the new tokens' embedding and LM-head rows "
                         f"{self.new_token_ids} train too (PEFT's trainable_token_indices)")
            if o.qlora:
                before, after = qlora.quantize_model(model, o.qlora, o.qlora_group or None)
                self.log(f"QLoRA: the blocks' frozen weights in {o.qlora}"
                         f"{f' (groups of {o.qlora_group})' if o.qlora_group else ''}, "
                         f"{before / 2**20:.1f} -> {after / 2**20:.1f} MiB")
        self.model, self.gpt_config = model.train(), model.config
        if c.device != "cpu":
            self.model.to(c.device)
        os.makedirs(self.run_dir, exist_ok=True)
        self.train_examples, self.val_examples, self.report = self._examples()
        self.log(f"data: {self.report.summary()}")
        self.meta = {"data_key": self._data_key()}
        self.optimizer = AdamW(lora_lib.trainable_parameters(self.model), c.weight_decay,
                               (c.beta1, c.beta2), c.eps, c.decay_embeddings)
        self.train_loader = packing.SFTBatches(self.train_examples, c.batch_size, c.block_size,
                                               c.seed, shuffle=True, packed=o.packing)
        self.val_loader = packing.SFTBatches(self.val_examples or self.train_examples[:1],
                                             c.batch_size, c.block_size, c.seed, shuffle=False,
                                             packed=o.packing)
        from ..train.trainer import token_byte_lengths
        self.byte_lengths = token_byte_lengths(self.tokenizer)
        self.metrics_path = ckpt.metrics_path(self.run_dir)
        self.live_progress = False
        trainable = sum(p.size for _, p in lora_lib.trainable_parameters(self.model))
        self.log(f"model: {self.gpt_config.family} {self.gpt_config.n_layer} layers, "
                 f"{self.model.num_parameters() / 1e6:.2f}M parameters, {trainable / 1e6:.3f}M "
                 f"trained; {c.max_steps} steps of {c.batch_size} "
                 f"{'packed rows' if o.packing else 'conversations'}")
        return self

    def _set_dropout(self, model):
        from ..nn.layers import Dropout
        model.config.dropout = self.config.dropout
        for _, module in model.named_modules():
            if isinstance(module, Dropout):
                module.p = float(self.config.dropout)

    def _examples(self):
        c, o = self.config, self.options
        conversations, report = chat_data.read_conversations(c.data)
        if o.val_data:
            val, _ = chat_data.read_conversations(o.val_data)
            train = conversations
        else:
            order = np.random.default_rng(c.seed).permutation(len(conversations))
            n_val = int(round(len(conversations) * c.val_fraction)) if len(conversations) > 1 else 0
            held = set(order[:n_val].tolist())
            train = [m for k, m in enumerate(conversations) if k not in held]
            val = [m for k, m in enumerate(conversations) if k in held]
        train_examples, report = chat_data.tokenize(self.tokenizer, train, c.block_size,
                                                    o.overflow, report)
        val_examples, _ = chat_data.tokenize(self.tokenizer, val, c.block_size, o.overflow)
        self.val_conversations = val
        if not train_examples:
            raise ConfigError(f"{c.data}: no conversation left to train on ({report.summary()})")
        return train_examples, val_examples, report

    def _data_key(self):
        c, o = self.config, self.options
        parts = [_file_sha256(c.data), _file_sha256(o.val_data) if o.val_data else "",
                 str(c.block_size), o.overflow, str(c.val_fraction), str(c.seed),
                 str(self.tokenizer.vocab_size)]
        return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]

    # --- the step and evaluation ---------------------------------------------------------------

    def batch_loss(self, batch):
        if batch.segment_ids is not None:
            _, loss = self.model(batch.x, batch.y, ignore_index=chat_data.IGNORE,
                                 segment_ids=batch.segment_ids, position_ids=batch.position_ids)
        else:
            _, loss = self.model(batch.x, batch.y, ignore_index=chat_data.IGNORE)
        return loss

    def evaluate(self):
        """{"val_loss", "val_bpb"}: mean loss over the held-out conversations' assistant tokens."""
        from ..tensor import no_grad
        c = self.config
        loader = self.val_loader
        batches = min(c.eval_batches, loader.num_batches)
        loader.epoch, loader.position = 0, 0
        total_nats = total_tokens = total_bytes = 0
        self.model.eval()
        try:
            with no_grad():
                for _ in range(batches):
                    batch = loader.next_batch()
                    counted = batch.y != chat_data.IGNORE
                    count = int(counted.sum())
                    if count == 0:
                        continue
                    loss = self.batch_loss(batch)
                    total_nats += loss.item() * count
                    total_tokens += count
                    total_bytes += int(self.byte_lengths[batch.y[counted]].sum())
        finally:
            self.model.train()
        if total_tokens == 0:
            return {"val_loss": float("nan"), "val_bpb": float("nan")}
        return {"val_loss": total_nats / total_tokens,
                "val_bpb": total_nats / math.log(2) / max(total_bytes, 1)}

    def samples(self, count=None, max_new_tokens=None, seed=None):
        from .evaluate import reply
        c = self.config
        prompts = [conv[:max(i for i, m in enumerate(conv) if m["role"] == "assistant")]
                   for conv in self.val_conversations[:c.num_samples if count is None else count]]
        return [reply(self.model, self.tokenizer, p, max_new_tokens or c.sample_tokens)
                for p in prompts]

    # --- checkpoints ---------------------------------------------------------------------------

    def checkpoint_weights(self):
        if not self.options.lora_rank:
            return self.model.state_dict()
        weights = lora_lib.base_state(self.model)
        weights.update(qlora.float_weights(self.model))     # QLoRA: W~ (module docstring)
        return weights

    def checkpoint_files(self):
        if not self.options.lora_rank:
            return {}
        model, base = self.model, self.config.init_from
        files = {peft_io.CONFIG_FILE: lambda p: peft_io.write_adapter_config(model, p, base),
                 peft_io.WEIGHTS_FILE: lambda p: peft_io.write_adapter_weights(model, p)}
        if self.options.qlora:
            from ..quantize.model import write_tensors
            files[qlora.CODES_FILE] = lambda p: write_tensors(p, qlora.code_tensors(model))
        return files

    def extra_trainer_state(self):
        return {"sft": self.options.to_dict(), "sft_hash": self.options.hash,
                "data_report": dataclasses.asdict(self.report),
                "new_token_ids": list(self.new_token_ids)}

    def restore(self, checkpoint, path):
        if self.options.lora_rank:
            _, adapter = peft_io.read_adapter(path)
            checkpoint.weights = {**checkpoint.weights, **adapter}
            if self.options.qlora:             # the model is quantized: load its adapters only
                from ..quantize.model import read_tensors
                params = dict(self.model.named_parameters())
                checkpoint.weights = {k: v for k, v in checkpoint.weights.items() if k in params}
                codes = os.path.join(path, qlora.CODES_FILE)
                if not os.path.isfile(codes):
                    raise CheckpointError(f"{path}: a QLoRA checkpoint without {qlora.CODES_FILE}; "
                                          f"resume from another checkpoint")
                qlora.load_codes(self.model, read_tensors(codes), path)
        return super().restore(checkpoint, path)


def finetune(config, options, log=print, stop_at_step=None):
    """A fresh fine-tuning run; returns the trainer's summary dict."""
    from ..train.trainer import _check_fresh_run_dir
    _check_fresh_run_dir(config.out_dir)
    trainer = _built(config, options, log)
    if os.path.exists(trainer.metrics_path):
        os.remove(trainer.metrics_path)
    return trainer.run(stop_at_step=stop_at_step)


def _built(config, options, log, resumed=None):
    return SFTTrainer(config, options, log).setup(resumed)


def resume_sft(run_dir, overrides=None, log=print, stop_at_step=None):
    """Continue the newest complete checkpoint of a fine-tuning run, bit for bit."""
    path = ckpt.resolve(run_dir)
    if os.path.abspath(path) == os.path.abspath(run_dir):
        run_dir = os.path.dirname(os.path.dirname(os.path.abspath(path)))
    checkpoint = ckpt.load(path)
    state = checkpoint.trainer_state
    if not isinstance(state.get("sft"), dict):
        raise CheckpointError(f"{path}: not a fine-tuning checkpoint (no SFT options); resume "
                              f"pre-training runs with `microgpt train --resume`")
    config = from_dict(state["config"])
    if config_hash(config) != state.get("config_hash"):
        raise CheckpointError(f"{path}: trainer_state.json's config does not match its hash")
    options = SFTOptions(**state["sft"])
    if options.hash != state.get("sft_hash"):
        raise CheckpointError(f"{path}: trainer_state.json's SFT options do not match their hash")
    config = dataclasses.replace(config, out_dir=run_dir, **(overrides or {}))
    trainer = _built(config, options, log, resumed=checkpoint)
    trainer.restore(checkpoint, path)
    log(f"resumed from {path} at step {trainer.step}")
    return trainer.run(stop_at_step=stop_at_step)


def load_finetuned(path, device="cpu"):
    """(GPT, Tokenizer, generation dict) as ckpt.load_model reads `path`, with a LoRA run's
    adapter (and trained token rows) applied and merged: what `microgpt generate` decodes
    with, so that a LoRA run generates as the fine-tuned model, not as its frozen base."""
    model, tokenizer, generation = ckpt.load_model(path, device)
    resolved = ckpt.resolve(path)
    if peft_io.is_adapter_dir(resolved):
        peft_io.load_adapter(model, resolved, merge=True)
    return model, tokenizer, generation


def load_chat_model(path, device="cpu"):
    """(GPT, Tokenizer, generation dict) of a fine-tuned run or checkpoint, its LoRA adapter
    (if any) applied and merged; any other model directory as ckpt.load_model reads it, with
    <|im_start|>/<|im_end|> added (mean rows) when its tokenizer lacks them, as SFT starts."""
    from ..tokenizer.chat import with_chat_tokens
    model, tokenizer, generation = load_finetuned(path, device)
    tokenizer, _ = with_chat_tokens(tokenizer)     # a base model: as fine-tuning would start it
    if tokenizer.vocab_size > model.config.vocab_size:
        resize_vocabulary(model, tokenizer.vocab_size)
    return model, tokenizer, generation
