"""Byte-level BPE tokenizer: train, encode, decode, exact against tiktoken.

    from microgpt.tokenizer import Tokenizer, StreamDecoder
    tok = Tokenizer.train("corpus/", vocab_size=8192)           # pattern="gpt4" by default
    ids = tok.encode("hello world")                              # specials disallowed
    ids = tok.encode("<|endoftext|>hi", allowed_special="all")
    tok.decode(ids); tok.save("tok.txt"); Tokenizer.load("tok.txt")
    tok = load_hf_tokenizer("Llama-3.2-1B/")                    # a Hugging Face tokenizer.json
    save_hf_tokenizer(tok, "out/")                               # ... and back, for AutoTokenizer

Chapters: patterns.py (split regexes, Unicode classes), bpe.py (Tokenizer, encoding rules),
train.py (the training algorithm), fileformat.py (save/load), stream.py (StreamDecoder),
text.py (str -> UTF-8 bytes), native.py (the C objects of csrc/bpe_*.c), bpe_build.py
(the cffi builder), hf.py (Hugging Face tokenizer.json in and out).
"""
from ..errors import TokenizerError
from .bpe import DEFAULT_SPECIALS, Tokenizer
from .hf import load_hf_tokenizer, save_hf_tokenizer
from .patterns import GPT2_PATTERN, GPT4_PATTERN
from .stream import StreamDecoder

__all__ = ["Tokenizer", "StreamDecoder", "TokenizerError", "DEFAULT_SPECIALS",
           "GPT2_PATTERN", "GPT4_PATTERN", "load_hf_tokenizer", "save_hf_tokenizer"]
