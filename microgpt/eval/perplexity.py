"""Perplexity and bits per byte of a token sequence, with a sliding window.

    perplexity(model, ids, eot_id, n_bytes, stride=None) -> {"tokens", "nats_per_token", "perplexity",
                                                     "bits_per_byte", "windows"}

The sequence is [eot] + ids, so every token of the text is predicted (the first from the
end-of-text id alone, as at a document start in training). With context length L and
stride S (1 <= S <= L, default L): window w feeds positions [wS, wS + L) and scores only
the targets no earlier window scored, i.e. after the first window the last S of each, so
every target but those of the first window sees at least L - S tokens of context:

    NLL = - sum_t log p(x_t | x_<t, within its window),  nats/token = NLL / N,
    perplexity = exp(nats/token),  bits/byte = NLL / (ln 2 * bytes of the text)

S = L gives disjoint windows (lm-eval's loglikelihood_rolling); a smaller S costs L/S times
more compute for a lower, more honest number on long texts. Each window's loss comes from
the backend's cross_entropy kernel through GPT.forward (ignored positions are -100).
"""
import math

import numpy as np

from ..errors import ConfigError
from ..tensor import no_grad


def windows(n_targets, block_size, stride):
    """[(input_start, input_end, first_scored)] over target positions 1..n_targets of
    [eot] + ids: inputs seq[a:b] predict seq[a+1:b+1]; targets >= first_scored count."""
    out, scored, start = [], 0, 0
    while scored < n_targets:
        end = min(start + block_size, n_targets)
        out.append((start, end, scored))
        scored = end
        start += stride
    return out


def perplexity(model, ids, eot_id, n_bytes=None, stride=None, batch_size=8):
    L = model.config.block_size
    stride = L if stride is None else stride
    if not 1 <= stride <= L:
        raise ConfigError(f"--stride must be in 1..{L} (the model's context), got {stride}")
    seq = np.concatenate([[eot_id], np.asarray(ids, dtype=np.int64)])
    n = len(seq) - 1
    if n < 1:
        raise ConfigError("perplexity: the text encodes to no tokens")
    plan = windows(n, L, stride)
    total = 0.0
    was_training = model.training
    model.eval()
    try:
        with no_grad():
            for s in range(0, len(plan), batch_size):
                chunk = plan[s:s + batch_size]
                width = max(b - a for a, b, _ in chunk)
                inputs = np.zeros((len(chunk), width), dtype=np.int64)
                targets = np.full((len(chunk), width), -100, dtype=np.int64)
                for r, (a, b, first) in enumerate(chunk):
                    inputs[r, :b - a] = seq[a:b]
                    t = seq[a + 1:b + 1].copy()
                    t[:max(first - a, 0)] = -100                  # scored by an earlier window
                    targets[r, :b - a] = t
                counted = int((targets != -100).sum())
                _, loss = model(inputs, targets=targets)
                total += float(loss.item()) * counted            # the loss is the mean
    finally:
        model.train(was_training)
    nats = total / n
    return {"tokens": n, "nats_per_token": nats, "perplexity": math.exp(nats),
            "bits_per_byte": total / (math.log(2) * n_bytes) if n_bytes else None,
            "windows": len(plan), "stride": stride}
