"""Trainable token rows: the new tokens' embedding and LM-head rows train under LoRA.

Why. A tokenizer lacking <|im_start|> / <|im_end|> gains them when fine-tuning starts, and
the model's table grows by mean rows (vocab.py). Under LoRA every base parameter is frozen,
those rows included, so the model can never learn to *emit* <|im_end|> (its LM-head row is
the mean row forever) nor tell the two markers apart on input: a LoRA run that cannot stop
(benchmarks/results/sft.md, the first LoRA figure). Full fine-tuning trains them with the rest.

What. PEFT's `trainable_token_indices` (its TrainableTokensLayer): for a table W (V, C) and
chosen rows I = (i_1 < ... < i_k), a trainable matrix D (k, C), initialised to W[I], and

    W'[i] = D[j]   if i = i_j          W'[i] = W[i]   otherwise

used in place of W: the embedding looks ids up in W', the LM head computes h W'^T. W stays
frozen, so the only gradient and the only optimizer state are D's, k x C numbers:

    dL/dD[j] = dL/dW'[i_j]          (the rows of the full table gradient at I)

W' is built each step as the concatenation of W's runs between chosen rows and D's runs
(ops.getitem + ops.concatenate: a copy of the table, and no gradient reaches W because W
does not require one). The LM head's dW' is then a full (V, C) matmul of which k rows are
kept, as in PEFT, whose index_copy makes torch compute the same; the embedding's is a
scatter-add. A tied model (GPT-2's wte = lm_head) has one D that both wrappers read, saved
once under the embedding's name, as PEFT ties its adapters.

Names, as PEFT's: the wrapper keeps the base's `weight` (so base checkpoints load as they
are) and adds `<table>.token_adapter.trainable_tokens_delta` (D: values, not differences,
despite PEFT's name). The adapter's config says which rows: a list (the input embedding;
the tied LM head follows) or, untied, {"embed_tokens": I, "lm_head": I} (peft_io.py).

Merging writes D into W's rows (W[I] <- D) and unmerging puts the originals back (kept as
a copy at wrap time); merge_and_unwrap also puts the plain Embedding / Linear back, so the
decoders (inference/decode.py), which read the tables directly, see an ordinary model.
"""
import numpy as np

from .. import ops, ops_fused
from ..errors import ConfigError
from ..nn.layers import Embedding, Linear
from ..nn.module import Module, Parameter

ADAPTER = "token_adapter"
DELTA = "trainable_tokens_delta"


class TokenAdapter(Module):
    """D (k, C): the trained values of rows `indices` of one table."""

    def __init__(self, weight, indices):
        table = weight.numpy()
        self.indices = sorted({int(i) for i in indices})
        if not self.indices or self.indices[0] < 0 or self.indices[-1] >= table.shape[0]:
            raise ConfigError(f"trainable token rows {list(indices)} must be ids in "
                              f"[0, {table.shape[0]})")
        self.original = np.array(table[self.indices], copy=True)
        self.trainable_tokens_delta = Parameter(self.original.copy(), device=weight.device)

    def runs(self):
        """[(first index, first row of D, length)] of consecutive chosen rows."""
        out = []
        for j, i in enumerate(self.indices):
            if out and out[-1][0] + out[-1][2] == i:
                out[-1] = (out[-1][0], out[-1][1], out[-1][2] + 1)
            else:
                out.append((i, j, 1))
        return out

    def table(self, base):
        """W' = W with rows I replaced by D, as an autograd expression (gradient only to D)."""
        pieces, at, delta = [], 0, self.trainable_tokens_delta
        for start, row, length in self.runs():
            if start > at:
                pieces.append(ops.getitem(base, slice(at, start)))
            pieces.append(delta if length == delta.shape[0] else
                          ops.getitem(delta, slice(row, row + length)))
            at = start + length
        if at < base.shape[0]:
            pieces.append(ops.getitem(base, slice(at, base.shape[0])))
        return pieces[0] if len(pieces) == 1 else ops.concatenate(pieces, 0)


class _TokenRows(Module):
    """Common part of the two wrappers: the frozen base layer and its adapter (own or tied)."""

    def __init__(self, base, adapter, tied):
        self.weight = base.weight                   # the base's Parameter, frozen, same name
        self.weight.requires_grad = False
        self._base = [base]                         # a list: not a child, so no second name
        if tied:
            self._tied = [adapter]                  # the embedding's D, read, not owned
        else:
            self.token_adapter = adapter
        self.merged = False

    @property
    def adapter(self):
        return self._tied[0] if hasattr(self, "_tied") else self.token_adapter

    @property
    def base_layer(self):
        return self._base[0]

    def current_table(self):
        return self.weight if self.merged else self.adapter.table(self.weight)

    def merge(self):
        if not self.merged and not hasattr(self, "_tied"):
            self._write(self.adapter.trainable_tokens_delta.numpy())
        self.merged = True

    def unmerge(self):
        if self.merged and not hasattr(self, "_tied"):
            self._write(self.adapter.original)
        self.merged = False

    def _write(self, rows):
        w = self.weight
        table = np.array(w.numpy(), copy=True)
        table[self.adapter.indices] = rows
        w.data = w.backend.asarray(table, w.dtype)


class TokenEmbedding(_TokenRows):
    def forward(self, ids):
        return ops_fused.embedding(ids, self.current_table())


class TokenHead(_TokenRows):
    def forward(self, x):
        return ops.linear(x, self.current_table())


def tables(model):
    """(the module holding the token embedding, its attribute name) of a GPT of either family."""
    owner = model.transformer if model.config.family == "gpt2" else model.model
    return owner, ("wte" if model.config.family == "gpt2" else "embed_tokens")


def train_token_rows(model, indices, head_indices="same"):
    """Make rows `indices` of the token embedding (and `head_indices` of an untied LM head:
    "same" = the embedding's, None = leave the head frozen) trainable; all else stays as it
    was (call after apply_lora froze the base). A tied head reads the embedding's rows.
    Returns token_indices(model), the value of PEFT's trainable_token_indices."""
    owner, name = tables(model)
    embedding, head = getattr(owner, name), model.lm_head
    if not isinstance(embedding, Embedding) or type(head) is not Linear:
        raise ConfigError("the token embedding or LM head is already wrapped (trainable rows "
                          "are set once)")
    if getattr(head, "weight_layout", "out_in") != "out_in":
        raise ConfigError("trainable token rows need the LM head in the (vocab, dim) layout")
    tied = head.weight is embedding.weight
    adapter = TokenAdapter(embedding.weight, indices)
    setattr(owner, name, TokenEmbedding(embedding, adapter, tied=False))
    if tied:
        model.lm_head = TokenHead(head, adapter, tied=True)
    elif head_indices is not None:
        rows = indices if isinstance(head_indices, str) and head_indices == "same" else head_indices
        model.lm_head = TokenHead(head, TokenAdapter(head.weight, rows), tied=False)
    return token_indices(model)


def token_wrappers(model):
    """[(module name, wrapper)] of the wrapped tables, the embedding first."""
    return [(n[:-1], m) for n, m in model.named_modules() if isinstance(m, _TokenRows)]


def token_indices(model):
    """PEFT's trainable_token_indices of `model`: None; a list of rows (the embedding's, which
    a tied head shares); or {"embed_tokens" (or "wte"): rows, "lm_head": rows}."""
    wrappers = token_wrappers(model)
    if not wrappers:
        return None
    if len(wrappers) == 1 or any(hasattr(m, "_tied") for _, m in wrappers):
        return list(wrappers[0][1].adapter.indices)
    return {n.rsplit(".", 1)[-1]: list(m.adapter.indices) for n, m in wrappers}


def from_config(model, value):
    """Apply a trainable_token_indices value (list or {module: rows}) to `model`."""
    owner, name = tables(model)
    if isinstance(value, dict):
        unknown = sorted(set(value) - {name, "lm_head"})
        if unknown or name not in value:
            raise ConfigError(f"trainable_token_indices names {', '.join(map(repr, unknown or value))}"
                              f"; this {model.config.family} model's tables are {name!r} and 'lm_head'")
        return train_token_rows(model, value[name], value.get("lm_head"))
    return train_token_rows(model, value, None)


def merge_and_unwrap(model):
    """Write the trained rows into the tables and put the plain Embedding / Linear back."""
    owner, name = tables(model)
    for parent, attr in ((owner, name), (model, "lm_head")):
        wrapper = getattr(parent, attr)
        if isinstance(wrapper, _TokenRows):
            wrapper.merge()
            setattr(parent, attr, wrapper.base_layer)
    return model
