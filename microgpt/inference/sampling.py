"""Choosing the next token from logits: repetition penalty, temperature, top-k, top-p.

For each row of logits (B, V), in this order:

  1. repetition penalty r (CTRL, Keskar et al. 2019): for every id already in the row's
     context, z = z / r if z > 0 else z * r  (r > 1 discourages repeats; r = 1 is off);
  2. temperature t: t == 0 means greedy (argmax, ties to the lowest id); else z = z / t;
  3. top-k: keep the k largest logits (every id tied with the k-th stays), drop the rest;
  4. top-p (nucleus, Holtzman et al. 2019): sort the probabilities p = softmax(z) in
     descending order and keep the shortest prefix whose sum reaches p_top (at least one);
  5. draw one id from the renormalized distribution by inverse CDF with one uniform number
     u ~ U[0, 1) from the caller's seeded NumPy Generator: the first id whose cumulative
     probability exceeds u.

All of it runs in float64 on the host; with the same seed and logits, the same ids come
out on every run and backend.
"""
import math
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError, ShapeError


@dataclass
class SamplingConfig:
    temperature: float = 0.8
    top_k: int = 0                 # 0 = off
    top_p: float = 1.0             # 1 = off
    repetition_penalty: float = 1.0

    def __post_init__(self):
        for name in ("temperature", "top_p", "repetition_penalty"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)) \
                    or not math.isfinite(value):
                raise ConfigError(f"{name} must be a finite number, got {value!r}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, (int, np.integer)):
            raise ConfigError(f"top_k must be an integer, got {self.top_k!r}")
        if self.temperature < 0:
            raise ConfigError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ConfigError(f"top_k must be >= 0, got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.repetition_penalty <= 0:
            raise ConfigError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")


def apply_repetition_penalty(logits, history, penalty):
    """logits (B, V) float64, modified in place for the ids in history[b] (iterables of ids)."""
    if penalty == 1.0:
        return logits
    for row, seen in enumerate(history):
        ids = np.unique(np.asarray(list(seen), dtype=np.int64))
        if ids.size == 0:
            continue
        z = logits[row, ids]
        logits[row, ids] = np.where(z > 0, z / penalty, z * penalty)
    return logits


def filter_top_k(logits, k):
    """-inf for every logit below the row's k-th largest (ties with the k-th are kept)."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = np.partition(logits, -k, axis=-1)[:, -k][:, None]          # (B, 1)
    return np.where(logits < kth, -np.inf, logits)


def softmax(z):
    z = z - np.max(z, axis=-1, keepdims=True)
    e = np.exp(z)
    return e / np.sum(e, axis=-1, keepdims=True)


def filter_top_p(probs, p):
    """Zero all but the smallest set of most-probable ids whose mass reaches p; renormalize."""
    if p >= 1.0:
        return probs
    order = np.argsort(-probs, axis=-1, kind="stable")                 # (B, V) descending
    sorted_probs = np.take_along_axis(probs, order, axis=-1)
    cumulative = np.cumsum(sorted_probs, axis=-1)
    # keep position i if the mass *before* it is still < p (so the first is always kept)
    keep_sorted = (cumulative - sorted_probs) < p
    keep = np.zeros_like(keep_sorted)
    np.put_along_axis(keep, order, keep_sorted, axis=-1)
    kept = np.where(keep, probs, 0.0)
    return kept / kept.sum(axis=-1, keepdims=True)


def sample(logits, rng, config, history=None):
    """Next ids (B,) int64 from logits (B, V) under a SamplingConfig and a NumPy Generator."""
    logits = np.array(logits, dtype=np.float64)                        # a private copy
    if logits.ndim != 2 or logits.shape[1] < 1:
        raise ShapeError(f"sample: logits must be (B, V), got shape {logits.shape}")
    if history is not None:
        if len(history) != logits.shape[0]:
            raise ShapeError(f"sample: {len(history)} histories for {logits.shape[0]} rows")
        apply_repetition_penalty(logits, history, config.repetition_penalty)
    if config.temperature == 0:
        return np.argmax(logits, axis=-1).astype(np.int64)
    logits = filter_top_k(logits / config.temperature, config.top_k)
    probs = filter_top_p(softmax(logits), config.top_p)
    cdf = np.cumsum(probs, axis=-1)
    u = rng.random(logits.shape[0])[:, None] * cdf[:, -1:]            # scale guards rounding
    ids = np.argmax(cdf > u, axis=-1)
    return ids.astype(np.int64)
