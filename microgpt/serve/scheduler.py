"""Continuous batching over a paged KV cache: requests join and leave the batch at every step.

    sched = Scheduler(model, num_blocks=512, max_batch=32)
    sched.add(Request("a", prompt_ids, max_tokens=64, sampling=SamplingConfig(temperature=0)))
    while sched.has_work():
        for event in sched.step():        # TokenEvent(request_id, token, finish_reason or None)
            ...
    sched.cancel("a")                     # frees its blocks at once

One step (iteration-level scheduling, as in Orca and vLLM):
  1. The running sequences each want their pending tokens computed: one for a sequence that is
     decoding (its last sampled token), the rest of its prompt for one in prefill. A prefill
     gets at most what is left of the step's token budget (max_step_tokens): a long prompt is
     chunked over several steps, and the decoding sequences keep moving meanwhile.
  2. Waiting requests join, oldest first, while the batch has room (max_batch) and budget.
  3. Each scheduled sequence reserves the cache blocks its new tokens need. When the pool runs
     dry, the newest running sequence is preempted: its blocks are freed and it goes back to the
     head of the queue with its tokens so far, to be recomputed later (vLLM's "recompute"
     preemption; the alternative, swapping blocks to host memory, buys nothing on a CPU).
  4. One PagedDecoder.forward for all scheduled rows; a sequence whose pending tokens are all in
     the cache now samples its next token with its own SamplingConfig, penalties and seeded
     Generator, so a request's output depends on its own seed only.
  5. A sequence ends on a stop id, max_tokens, or the model's context; its blocks are freed
     right away, as are a cancelled one's.

Alone or in a crowd, a request computes the same rows the same way (paged.py's rule), samples
from its own Generator, and a preempted one recomputes its generated tokens as generated rows:
its greedy text does not depend on the other requests (tests/test_serve_scheduler.py).

Penalties (OpenAI's definitions): logit[j] -= presence * (count[j] > 0) + frequency * count[j],
count over the tokens generated so far; then sampling.sample (repetition penalty, temperature,
top-k, top-p). logprobs: the log-softmax of the final (penalized, pre-temperature) logits at
the chosen token, and with top_logprobs = k the k largest of them, cheap since the logits are
on the host anyway.

The scheduler is single-threaded; serve/engine_loop.py runs it on a thread of its own.
"""
import math
import time
from collections import deque
from dataclasses import dataclass, field
from typing import List, Optional, Sequence

import numpy as np

from ..errors import ConfigError
from ..inference.paged import PagedDecoder, PagedKVCache
from ..inference.sampling import SamplingConfig, sample
from ..tensor import no_grad


@dataclass
class Request:
    request_id: str
    prompt: List[int]
    max_tokens: int = 16
    sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(temperature=0))
    seed: Optional[int] = None
    stop_ids: Sequence[int] = ()
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logprobs: bool = False
    top_logprobs: int = 0           # with logprobs: also the k most likely tokens of each position


@dataclass
class TokenEvent:
    request_id: str
    token: Optional[int]            # None for an event that only finishes the request
    finish_reason: Optional[str]    # "stop" (a stop id), "length", "context", or None
    logprob: Optional[float] = None
    top: Optional[list] = None      # [(token, logprob)] of the top_logprobs best, best first


class _Sequence:
    def __init__(self, request, arrival):
        self.request, self.arrival = request, arrival
        self.generated: List[int] = []
        seed = request.seed if request.seed is not None else int.from_bytes(np.random.bytes(4), "little")
        self.rng = np.random.Generator(np.random.PCG64(seed))
        self.computed = 0                # tokens of prompt + generated held in the cache
        self.first_token_at = None

    @property
    def tokens(self):
        return self.request.prompt + self.generated

    @property
    def pending(self):
        return len(self.request.prompt) + len(self.generated) - self.computed


class Scheduler:
    def __init__(self, model, num_blocks=None, block_size=16, max_batch=32, max_step_tokens=256):
        if max_batch < 1 or max_step_tokens < 1:
            raise ConfigError(f"max_batch and max_step_tokens must be >= 1, got {max_batch}, {max_step_tokens}")
        model.eval()
        if not PagedDecoder.supports(model):
            raise ConfigError("serving needs a plain GPT (no adapters or replaced modules); merge "
                              "adapters into the weights first")
        self.model, self.block_size = model, block_size
        self.context = model.config.block_size
        if num_blocks is None:                      # every slot of the batch at full context
            num_blocks = max_batch * -(-self.context // block_size)
        self.cache = PagedKVCache(model.config, num_blocks, block_size, model.device, model.dtype)
        self.decoder = PagedDecoder(model, self.cache)
        self.max_batch, self.max_step_tokens = max_batch, max_step_tokens
        self.waiting: deque = deque()
        self.running: List[_Sequence] = []
        self._by_id = {}
        self._arrivals = 0
        self.preemptions = 0
        self.tokens_generated = 0

    # --- requests ---------------------------------------------------------------------------

    def add(self, request):
        if request.request_id in self._by_id:
            raise ConfigError(f"request id {request.request_id!r} is already scheduled")
        if not request.prompt:
            raise ConfigError("a request needs at least one prompt token")
        if len(request.prompt) >= self.context:
            raise ConfigError(f"a prompt of {len(request.prompt)} tokens leaves no room in the "
                              f"model's context of {self.context} tokens")
        need = -(-(len(request.prompt) + 1) // self.block_size)
        if need > self.cache.num_blocks:
            raise ConfigError(f"a prompt of {len(request.prompt)} tokens needs {need} cache blocks; "
                              f"the cache has {self.cache.num_blocks}")
        self._arrivals += 1
        seq = _Sequence(request, self._arrivals)
        self._by_id[request.request_id] = seq
        self.waiting.append(seq)

    def cancel(self, request_id):
        """Drop a request wherever it is; its blocks are free when this returns."""
        seq = self._by_id.pop(request_id, None)
        if seq is None:
            return False
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        self.cache.release(request_id)
        return True

    def has_work(self):
        return bool(self.running or self.waiting)

    @property
    def num_waiting(self):
        return len(self.waiting)

    @property
    def num_running(self):
        return len(self.running)

    # --- one step -------------------------------------------------------------------------------

    def _preempt_newest(self):
        victim = max(self.running, key=lambda s: s.arrival)
        self.running.remove(victim)
        self.cache.release(victim.request.request_id)
        victim.computed = 0
        self.waiting.appendleft(victim)
        self.preemptions += 1
        return victim

    def _schedule(self):
        """[(seq, n_new)] for this step, with their blocks reserved."""
        budget, chosen = self.max_step_tokens, []
        for seq in list(self.running):
            if budget == 0:
                break
            chosen.append([seq, min(seq.pending, budget)])
            budget -= chosen[-1][1]
        while self.waiting and budget > 0 and len(self.running) < self.max_batch:
            seq = self.waiting.popleft()
            self.running.append(seq)
            self.cache.add(seq.request.request_id)
            chosen.append([seq, min(seq.pending, budget)])
            budget -= chosen[-1][1]
        reserved = []
        for item in sorted(chosen, key=lambda c: c[0].arrival):      # oldest first keeps its room
            seq, n = item
            if seq not in self.running:
                continue                                           # preempted below for an older one
            while not self.cache.reserve(seq.request.request_id, n):
                victim = self._preempt_newest()
                if victim is seq:
                    break
            else:
                reserved.append((seq, n))
        return reserved

    def step(self):
        """Run one forward pass over every scheduled sequence; returns [TokenEvent]."""
        items = self._schedule()
        if not items:
            return []
        prompt_len = {s.request.request_id: len(s.request.prompt) for s, _ in items}
        plan_items, ids = [], []
        for seq, n in items:
            start = seq.computed
            tokens = seq.tokens[start:start + n]
            n_prompt = max(0, min(n, prompt_len[seq.request.request_id] - start))
            plan_items.append((seq.request.request_id, n, n_prompt))
            ids.extend(tokens)
        plan = self.cache.plan(plan_items)
        with no_grad():
            logits = self.decoder.forward(np.array(ids, np.int64), plan)
        events = []
        for row, (seq, n) in enumerate(items):
            seq.computed += n
            if seq.pending:
                continue                                             # prompt not finished yet
            event = self._sample(seq, logits[row])
            events.append(event)
            if event.finish_reason is not None:
                self._finish(seq)
        return events

    def _sample(self, seq, row_logits):
        req = seq.request
        z = np.array(row_logits, dtype=np.float64)
        if seq.generated and (req.presence_penalty or req.frequency_penalty):
            ids, counts = np.unique(np.array(seq.generated), return_counts=True)
            z[ids] -= req.presence_penalty + req.frequency_penalty * counts
        token = int(sample(z[None], seq.rng, req.sampling, [seq.tokens])[0])
        logprob, top = None, None
        if req.logprobs:
            log_probs = z - z.max()
            log_probs -= math.log(np.exp(log_probs).sum())
            logprob = float(log_probs[token])
            k = min(req.top_logprobs, log_probs.size)
            if k > 0:
                best = np.argpartition(-log_probs, k - 1)[:k]
                best = best[np.lexsort((best, -log_probs[best]))]       # best first; ties by id
                top = [(int(t), float(log_probs[t])) for t in best]
        seq.generated.append(token)
        self.tokens_generated += 1
        if seq.first_token_at is None:
            seq.first_token_at = time.monotonic()
        reason = None
        if token in req.stop_ids:
            reason = "stop"
        elif len(seq.generated) >= req.max_tokens:
            reason = "length"
        elif len(seq.tokens) >= self.context:
            reason = "context"
        return TokenEvent(req.request_id, token, reason, logprob, top)

    def _finish(self, seq):
        self.running.remove(seq)
        self._by_id.pop(seq.request.request_id, None)
        self.cache.release(seq.request.request_id)
