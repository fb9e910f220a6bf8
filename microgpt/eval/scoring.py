"""Log-likelihood of continuations: sum_i log p(cont_i | context, cont_<i), scored with a
shared KV cache so the context of a multiple-choice question is run once, not once per choice.

    scorer = Scorer(model, batch_size=16)
    results = scorer.score([(context_ids, continuation_ids), ...])
    results[0].logprob, results[0].greedy      # greedy: every token was the argmax

Tokenization (encode_request) is lm-eval's, so the scores are the same numbers
(lm_eval/api/model.py, TemplateLM._encode_pair and loglikelihood): trailing whitespace of
the context moves to the front of the continuation; the whole string context+continuation
is encoded and the continuation is what lies past the context's own token count,

    context_ids = encode(context),  continuation_ids = encode(context + continuation)[len(context_ids):]

so a BPE merge across the boundary is scored as lm-eval scores it. An empty context
conditions on the end-of-text id (lm-eval's prefix token). The model input is
(context_ids + continuation_ids)[:-1]; a request longer than the context window + 1 loses
tokens from the left, as lm-eval truncates it (counted in `Result.truncated`; with
truncate=False it is an error instead).

How the work is shared (the speed of `microgpt eval`):
  1. Requests with the same context ids form a group (the choices of one question).
  2. The contexts are run once each, batched: a question whose continuations are all one
     token (MMLU's " A" .. " D") needs nothing more, since the logits at the context's last
     position score every choice, so its contexts are right-padded into batches (causal
     attention: padding after a row's last real position cannot change that position).
  3. Otherwise contexts of equal length are batched (sorted by length), their KV cache is
     kept, and each choice's remaining tokens cont[:-1] run on a copy of its question's cache
     rows, right-padded, batch_size rows at a time.
So a question with k choices costs one pass over its context plus k short passes, where
lm-eval's hf backend runs k full sequences. The forward pass is inference/decode.py's
Decoder (the GPT's backend kernels without autograd, CPU or CUDA) with every position's
hidden state kept; a model it does not support (a wrapped layer) runs whole sequences
through GPT.forward instead. log-softmax is taken in float64 on the host over the rows
that are read.
"""
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np

from ..errors import ConfigError
from ..inference.decode import Decoder
from ..nn import KVCache
from ..tensor import no_grad


@dataclass
class Result:
    logprob: float
    greedy: bool
    tokens: int              # continuation tokens scored
    truncated: int = 0       # context tokens dropped from the left to fit the window


def encode_request(tokenizer, context: str, continuation: str):
    """(context_ids, continuation_ids) exactly as lm-eval's causal models split them."""
    def encode(text):
        return tokenizer.encode(text, allowed_special="all")
    if context == "":
        prefix = tokenizer.eot_id
        cont = encode(continuation)
        if prefix is None:
            raise ConfigError("an empty context needs a tokenizer with an end-of-text id")
        return ([prefix], cont) if not cont or cont[0] != prefix else (cont[:1], cont[1:])
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole, ctx = encode(context + continuation), encode(context)
    return ctx, whole[len(ctx):]


def log_softmax(logits):
    x = np.asarray(logits, dtype=np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


class _Forward(Decoder):
    """Decoder.step with every position's final hidden state kept (scoring reads many)."""

    def hidden(self, ids):
        """ids (B, T) at the cache's next positions -> norm_f(x) (B, T, C), a backend array."""
        be = self.be
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        b, t = ids.shape
        start = self.cache.position
        x = be.embedding_forward(be.asarray(ids, np.dtype(np.int64)), self.wte)
        rotary = None
        if self.gpt2:
            positions = be.asarray(np.arange(start, start + t, dtype=np.int64), np.dtype(np.int64))
            x = be.add(x, be.embedding_forward(positions, self.wpe))
        else:
            rotary = self.model.rotary.slice(start, t, self.model.device, self.model.dtype)
        for layer, w in enumerate(self.layers):
            x = be.add(x, self._attention(self._norm(x, w["ln_1"]), w, layer, b, t, rotary))
            x = be.add(x, self._mlp(self._norm(x, w["ln_2"]), w))
        self.cache.position = start + t
        return self._norm(x, self.norm_f)

    def logits_at(self, hidden, rows, positions):
        """The LM head on the chosen (row, position) hidden states only -> (N, V) host array."""
        picked = self.be.to_numpy(hidden)[np.asarray(rows), np.asarray(positions)]   # (N, C)
        picked = self.be.asarray(np.ascontiguousarray(picked[None]), picked.dtype)
        return self.be.to_numpy(self.be.linear_forward(picked, self.lm_head, None))[0]

    def take_rows(self, cache, rows):
        """A new KVCache holding rows `rows` (repeats allowed) of `cache`."""
        be, out = self.be, KVCache(len(cache.keys), cache.max_length)
        out.position = cache.position
        for layer in range(len(cache.keys)):
            for store, source in ((out.keys, cache.keys), (out.values, cache.values)):
                parts = [be.getitem(source[layer], (slice(r, r + 1),)) for r in rows]
                store[layer] = parts[0] if len(parts) == 1 else be.concatenate(parts, 0)
        return out


def _pad(rows, fill=0):
    width = max(len(r) for r in rows)
    out = np.full((len(rows), width), fill, dtype=np.int64)
    for i, r in enumerate(rows):
        out[i, :len(r)] = r
    return out


class Scorer:
    def __init__(self, model, batch_size=16, truncate=True, fast=True):
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        self.model, self.batch_size, self.truncate = model, batch_size, truncate
        self.block_size = model.config.block_size
        self.fast = fast
        self.passes = 0                      # forward passes run (the tests count them)

    def _fit(self, ctx, cont, index):
        """lm-eval's left truncation: keep the last block_size + 1 tokens of ctx + cont."""
        if not cont:
            raise ConfigError(f"request {index}: the continuation encodes to no tokens")
        if len(cont) > self.block_size:
            raise ConfigError(f"request {index}: a continuation of {len(cont)} tokens does not "
                              f"fit the model's context of {self.block_size}")
        excess = len(ctx) + len(cont) - 1 - self.block_size
        if excess <= 0:
            return list(ctx), 0
        if not self.truncate:
            raise ConfigError(f"request {index}: {len(ctx) + len(cont) - 1} tokens exceed the "
                              f"model's context of {self.block_size}; shorten the prompt (fewer "
                              f"shots) or allow left truncation")
        return list(ctx[excess:]), excess

    def score(self, requests: Sequence[Tuple[Sequence[int], Sequence[int]]],
              progress=None) -> List[Result]:
        fitted = []
        for i, (ctx, cont) in enumerate(requests):
            ctx, dropped = self._fit(ctx, list(cont), i)
            fitted.append((ctx, list(cont), dropped))
        results: List[Optional[Result]] = [None] * len(fitted)
        was_training = self.model.training
        self.model.eval()
        try:
            with no_grad():
                if self.fast and Decoder.supports(self.model):
                    self._score_shared(fitted, results, progress)
                else:
                    self._score_whole(fitted, results, progress)
        finally:
            self.model.train(was_training)
        return results

    # --- the shared-context path -----------------------------------------------------------

    def _score_shared(self, fitted, results, progress):
        groups = {}
        for i, (ctx, _cont, _) in enumerate(fitted):
            groups.setdefault(tuple(ctx), []).append(i)
        single, multi = [], []
        for c, ix in groups.items():
            (single if all(len(fitted[i][1]) == 1 for i in ix) else multi).append((c, ix))
        single.sort(key=lambda g: -len(g[0]))
        for start in range(0, len(single), self.batch_size):
            batch = single[start:start + self.batch_size]
            forward = _Forward(self.model)
            hidden = forward.hidden(_pad([c for c, _ in batch]))
            self.passes += 1
            logp = log_softmax(forward.logits_at(hidden, range(len(batch)),
                                                 [len(c) - 1 for c, _ in batch]))
            for row, (_, members) in enumerate(batch):
                for i in members:
                    self._finish(results, fitted, i, [logp[row]])
            if progress:
                progress(sum(len(m) for _, m in batch))
        multi.sort(key=lambda g: len(g[0]))
        start = 0
        while start < len(multi):
            end = start + 1
            while (end < len(multi) and end - start < self.batch_size
                   and len(multi[end][0]) == len(multi[start][0])):
                end += 1
            self._score_group_batch(multi[start:end], fitted, results)
            if progress:
                progress(sum(len(m) for _, m in multi[start:end]))
            start = end

    def _score_group_batch(self, batch, fitted, results):
        """Contexts of one length: run them once, then every choice's rest on their cache."""
        forward = _Forward(self.model)
        length = len(batch[0][0])
        hidden = forward.hidden(np.array([c for c, _ in batch], dtype=np.int64))
        self.passes += 1
        first = log_softmax(forward.logits_at(hidden, range(len(batch)), [length - 1] * len(batch)))
        context_cache = forward.cache
        branch = []                                       # (request index, its group's row)
        for row, (_, members) in enumerate(batch):
            for i in members:
                if len(fitted[i][1]) == 1:
                    self._finish(results, fitted, i, [first[row]])
                else:
                    branch.append((i, row))
        for s in range(0, len(branch), self.batch_size):
            chunk = branch[s:s + self.batch_size]
            forward.cache = forward.take_rows(context_cache, [row for _, row in chunk])
            hidden = forward.hidden(_pad([fitted[i][1][:-1] for i, _ in chunk]))
            self.passes += 1
            rows, positions = [], []
            for r, (i, _) in enumerate(chunk):
                n = len(fitted[i][1]) - 1
                rows += [r] * n
                positions += list(range(n))
            logp = log_softmax(forward.logits_at(hidden, rows, positions))
            at = 0
            for i, row in chunk:
                n = len(fitted[i][1]) - 1
                self._finish(results, fitted, i, [first[row]] + list(logp[at:at + n]))
                at += n

    @staticmethod
    def _finish(results, fitted, i, logp_rows):
        """Sum the continuation's log-probabilities from one log-softmax row per token."""
        cont = fitted[i][1]
        total, greedy = 0.0, True
        for token, row in zip(cont, logp_rows):
            total += float(row[token])
            greedy = greedy and int(np.argmax(row)) == token
        results[i] = Result(total, greedy, len(cont), fitted[i][2])

    # --- whole sequences through GPT.forward (models the Decoder does not support) -----------

    def _score_whole(self, fitted, results, progress):
        order = sorted(range(len(fitted)), key=lambda i: -(len(fitted[i][0]) + len(fitted[i][1])))
        for s in range(0, len(order), self.batch_size):
            chunk = order[s:s + self.batch_size]
            inputs = [(fitted[i][0] + fitted[i][1])[:-1] for i in chunk]
            logits = self.model(_pad(inputs))[0].numpy()
            self.passes += 1
            for r, i in enumerate(chunk):
                ctx, cont = fitted[i][0], fitted[i][1]
                first = len(ctx) - 1
                rows = log_softmax(logits[r, first:first + len(cont)])
                self._finish(results, fitted, i, list(rows))
            if progress:
                progress(len(chunk))
