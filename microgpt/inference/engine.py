"""KV-cache text generation: prefill the prompt once, then decode one token at a time.

    engine = Engine(model, tokenizer)
    outs = engine.generate(["def main(", "import os"], max_new_tokens=64, seed=0,
                           sampling=SamplingConfig(temperature=0.8, top_k=40), stop=["\\n\\n"])
    outs[0].text, outs[0].ids, outs[0].finish_reason     # "eot" | "stop" | "length" | "context"

How a batch of prompts of different lengths is decoded without padding: all rows move in
lockstep through positions 0, 1, 2 ... The shortest prompt's length m is *prefilled* in one
forward pass, filling the KV cache for positions 0..m-1; from then on every step feeds one
token per row, which is the row's next prompt token while it still has prompt left
(teacher forcing) and the sampled token after that. So every position holds the same kind
of token in every row, the cache needs no masks, and a longer prompt just spends a few
extra single-token steps. Rows that finish keep being fed (their output is ignored) until
every row is done; the cost is the lockstep, the gain is simplicity.

Stopping, per row: the end-of-text id, any of the `stop` strings appearing in the
generated text (the text is cut before it), max_new_tokens, or the model's context
(block_size) running out. Text is built with the tokenizer's StreamDecoder, which only
emits complete UTF-8 characters; `on_text(row, piece)` receives pieces as they become
final — held back by (longest stop string - 1) characters so a stop string is never
half-printed. `generate_ids` is the same loop over token ids only (no tokenizer).

The forward pass of each step is paged.PagedDecoder (the GPT's own kernels without the autograd
layer, several times faster at batch 1, over a paged KV cache: appending a position writes one
row instead of copying the history) when the model is a plain GPT, else GPT.forward with its
KV cache; both give the same logits. Sampling (temperature, top-k, top-p, repetition
penalty) is sampling.py; one seeded PCG64
Generator serves the whole batch, so a seed fixes the output.
"""
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence

import numpy as np

from ..errors import ConfigError
from ..tensor import no_grad
from .decode import Decoder
from .paged import PagedDecoder, PagedKVCache
from .sampling import SamplingConfig, sample


@dataclass
class Completion:
    ids: List[int] = field(default_factory=list)     # generated ids (prompt not included)
    text: str = ""
    finish_reason: str = ""


def _last_logits(logits):
    """(B, T, V) Tensor -> (B, V) float host array of the last position."""
    return logits.numpy()[:, -1, :]


class Engine:
    """fast=True decodes with the GPT's kernels without autograd whenever the model is a plain
    GPT; fast=False, or any other model, goes through GPT.forward.

    batch_invariant=True (the default) decodes over the paged cache with one linear path per
    kind of row (paged.py), so a row's tokens do not depend on the other rows of the batch and
    equal what the server (serve/scheduler.py) gives the same request. batch_invariant=False
    is for callers that only need *a* correct sample and score it again afterwards, as RL
    rollouts do (finetune/ppo.py recomputes every log-prob with the training forward): the
    paged decoder then sends every row of every float layer through linear_forward, whose
    packed GEMM serves many rows faster than the streaming path (paged.py, batch_invariant),
    and each decode step is still one C call (csrc/decode_step.c). The cost is that a row's
    rounding can depend on B. Until 2026-12-01 these rows shared a decode.Decoder over the
    contiguous cache; with the C step the paged decoder is faster: 16 rows x 64 tokens of the
    demo shape (benchmarks/bench_align.py's rollout), one script at load ~1: 11.5-11.9 thousand
    tokens/s through decode.Decoder, 13.7-16.4 thousand through this path."""

    def __init__(self, model, tokenizer=None, fast=True, batch_invariant=True):
        self.model = model
        self.tokenizer = tokenizer
        self.fast = fast
        self.batch_invariant = batch_invariant

    def _forward_fn(self, batch_size, positions=None):
        """A function ids (B, T) -> last-position logits (B, V) that extends its own cache
        (room for `positions` per row, default the whole context)."""
        if self.fast and Decoder.supports(self.model):
            cache = PagedKVCache.for_batch(self.model, batch_size, positions=positions)
            return PagedDecoder(self.model, cache, batch_invariant=self.batch_invariant).step
        cache = self.model.new_kv_cache(batch_size)
        return lambda ids: _last_logits(self.model(ids, kv_cache=cache)[0])

    @property
    def block_size(self):
        return self.model.config.block_size

    def encode_prompts(self, prompts):
        """The prompts as id lists, checked as generate will check them (ids in the vocabulary,
        room left in the context): a caller can fail before printing anything."""
        return self._prompt_ids(prompts)

    def _prompt_ids(self, prompts):
        rows = []
        for p in prompts:
            if isinstance(p, str):
                if self.tokenizer is None:
                    raise ConfigError("text prompts need a tokenizer; pass token ids instead")
                ids = self.tokenizer.encode(p, allowed_special="all") if p else []
            else:
                ids = [int(i) for i in p]
            if not ids:                     # an empty prompt starts a fresh document
                if self.eot_id is None:
                    raise ConfigError("an empty prompt needs a tokenizer with an end-of-text id")
                ids = [self.eot_id]
            vocab = self.model.config.vocab_size
            if min(ids) < 0 or max(ids) >= vocab:
                raise ConfigError(f"prompt ids must lie in [0, {vocab})")
            if len(ids) >= self.block_size:
                raise ConfigError(f"a prompt of {len(ids)} tokens leaves no room in the model's "
                                  f"context of {self.block_size} tokens; shorten it to at most "
                                  f"{self.block_size - 1}")
            rows.append(ids)
        if not rows:
            raise ConfigError("no prompts given")
        return rows

    @property
    def eot_id(self):
        return getattr(self.tokenizer, "eot_id", None)

    def generate_ids(self, prompts, max_new_tokens=128, sampling=None, seed=0, stop_ids=None,
                     on_token: Optional[Callable[[int, int], bool]] = None):
        """Lockstep KV-cache decoding over token ids.

        prompts: list of id lists (or strings, with a tokenizer). stop_ids: ids that end a row
        (default: the end-of-text id). on_token(row, id) is called for each generated id and
        returns True to finish that row (stop strings use this). Returns [Completion].
        """
        if max_new_tokens < 0:
            raise ConfigError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        sampling = sampling or SamplingConfig()
        rows = self._prompt_ids(prompts)
        if stop_ids is None:
            stop_ids = () if self.eot_id is None else (self.eot_id,)
        stop_ids = set(int(i) for i in stop_ids)
        rng = np.random.Generator(np.random.PCG64(seed))
        B, lengths = len(rows), [len(r) for r in rows]
        m = min(lengths)
        out = [Completion() for _ in rows]
        done = [max_new_tokens == 0] * B
        history = [list(r[:m]) for r in rows]       # context so far (repetition penalty)
        was_training = self.model.training
        self.model.eval()
        try:
            with no_grad():
                forward = self._forward_fn(B, max(lengths) + max_new_tokens)
                prefill = np.array([r[:m] for r in rows], dtype=np.int64)       # (B, m)
                logits = forward(prefill)
                position = m                                                    # next slot
                while not all(done):
                    sampled = sample(logits, rng, sampling, history)            # (B,)
                    step = np.empty(B, dtype=np.int64)
                    for r in range(B):
                        if position < lengths[r]:
                            step[r] = rows[r][position]                         # still prompt
                        elif done[r]:
                            step[r] = step_fill(rows[r], out[r])
                        else:
                            step[r] = sampled[r]
                            out[r].ids.append(int(sampled[r]))
                            if int(sampled[r]) in stop_ids:
                                done[r], out[r].finish_reason = True, "eot"
                            elif on_token is not None and on_token(r, int(sampled[r])):
                                done[r], out[r].finish_reason = True, "stop"
                            elif len(out[r].ids) >= max_new_tokens:
                                done[r], out[r].finish_reason = True, "length"
                        history[r].append(int(step[r]))
                    if all(done):
                        break
                    if position + 1 > self.block_size:
                        for r in range(B):
                            if not done[r]:
                                done[r], out[r].finish_reason = True, "context"
                        break
                    logits = forward(step[:, None])
                    position += 1
        finally:
            self.model.train(was_training)
        for c in out:
            c.finish_reason = c.finish_reason or "length"
        return out

    def generate(self, prompts: Sequence, max_new_tokens=128, sampling=None, seed=0,
                 stop: Sequence[str] = (), on_text: Optional[Callable[[int, str], None]] = None):
        """Generate text for each prompt; see the module docstring. Returns [Completion]."""
        if self.tokenizer is None:
            raise ConfigError("Engine.generate needs a tokenizer; use generate_ids for ids")
        from ..tokenizer import StreamDecoder
        stop = [s for s in stop if s]
        hold = max((len(s) for s in stop), default=1) - 1
        n = len(prompts)
        decoders = [StreamDecoder(self.tokenizer) for _ in range(n)]
        texts, shown, cut = [""] * n, [0] * n, [None] * n

        def emit(row, upto):
            if on_text is not None and upto > shown[row]:
                on_text(row, texts[row][shown[row]:upto])
            shown[row] = max(shown[row], upto)

        def on_token(row, token):
            texts[row] += decoders[row].feed(token)
            for s in stop:
                found = texts[row].find(s)
                if found >= 0 and (cut[row] is None or found < cut[row]):
                    cut[row] = found
            if cut[row] is not None:
                texts[row] = texts[row][:cut[row]]
                emit(row, len(texts[row]))
                return True
            emit(row, len(texts[row]) - hold)
            return False

        stop_ids = None if self.eot_id is None else (self.eot_id,)
        outs = self.generate_ids(prompts, max_new_tokens, sampling, seed, stop_ids, on_token)
        for row, c in enumerate(outs):
            if cut[row] is None:              # the end-of-text id itself is never decoded
                texts[row] += decoders[row].flush()
                emit(row, len(texts[row]))
            c.text = texts[row]
        return outs


def step_fill(prompt, completion):
    """What a finished row is fed while others continue: its last token (output ignored)."""
    return completion.ids[-1] if completion.ids else prompt[-1]
