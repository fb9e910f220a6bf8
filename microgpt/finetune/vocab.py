"""Growing a model's vocabulary for new special tokens (<|im_start|>, <|im_end|>).

A tokenizer that gains ids (tokenizer/chat.py's with_chat_tokens) needs as many new rows in
the token embedding and, when it is a separate matrix, in the LM head. A new row starts as
the mean of the existing rows: the embedding of an "average" token, so the first forward
pass through it is ordinary (a random row of another scale would be an outlier), and as an
LM-head row it gives the new token the mean logit, neither favoured nor ruled out
(Hewitt's "Initializing new word embeddings"; transformers' resize_token_embeddings does the
same by default). A tied model has one matrix under both names and grows once.
"""
import numpy as np

from ..errors import ConfigError
from ..nn.module import Parameter


def _grow(param, rows):
    old = param.numpy()
    mean = old.mean(axis=0, keepdims=True, dtype=np.float64).astype(old.dtype)
    grown = np.concatenate([old, np.repeat(mean, rows - old.shape[0], axis=0)])
    return Parameter(grown, device=param.device)


def resize_vocabulary(model, vocab_size):
    """Give `model` vocab_size rows (>= its own): new rows are the mean row. In place;
    returns the model. model.config.vocab_size follows."""
    current = model.config.vocab_size
    if vocab_size < current:
        raise ConfigError(f"cannot shrink the vocabulary from {current} to {vocab_size} rows")
    if vocab_size == current:
        return model
    table = model.transformer.wte if model.config.family == "gpt2" else model.model.embed_tokens
    tied = model.lm_head.weight is table.weight
    table.weight = _grow(table.weight, vocab_size)
    model.lm_head.weight = table.weight if tied else _grow(model.lm_head.weight, vocab_size)
    model.config.vocab_size = vocab_size
    return model
