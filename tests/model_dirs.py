"""Model directories to inspect, convert and train from, built by the peers (no download).

    path = hf_directory(tmp / "q", "qwen3", head_dim=16)       # transformers' save_pretrained
    run = our_run(tmp / "run")                                  # a finished `microgpt train`

hf_directory: a byte-level BPE trained by the `tokenizers` library on a few sentences,
saved with transformers' PreTrainedTokenizerFast (tokenizer.json + tokenizer_config.json),
and a random-init transformers model whose embedding has exactly the tokenizer's ids (or
`pad_rows` more, as Qwen pads), every parameter redrawn (transformers starts biases at 0
and gains at 1, which would hide a copy to the wrong place), saved by save_pretrained:
float32, sharded (max_shard_size 20KB), bfloat16 or float16.

our_run: a few real steps of our trainer on a tiny corpus, written by the CLI.
"""
import json
import os
import shutil

import numpy as np

SENTENCES = ["the quick brown fox jumps over the lazy dog.", "def main():\n    return 42\n",
             "seven wizards quietly hex jovial frogs", "Zwölf Boxkämpfer jagen Viktor quer über den Sylter Deich",
             "1234 + 5678 = 6912", "  indented  words\tand tabs\n\n"]
EOT = "<|endoftext|>"
LLAMA_SIZES = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, max_position_embeddings=64)
GPT2_SIZES = dict(n_embd=32, n_layer=2, n_head=4, n_positions=64)


def hf_tokenizer(vocab_size=300):
    """transformers' fast tokenizer over a byte-level BPE trained here; <|endoftext|> is id 0,
    bos and eos."""
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOT], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(SENTENCES * 20, trainer)
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOT, eos_token=EOT)


def hf_model(model_type, vocab_size, seed=0, **overrides):
    """A transformers model of `model_type` on the small sizes, every parameter redrawn:
    matrices N(0, 0.3), embeddings and biases N(0, 0.1), norm gains 1 + N(0, 0.2)."""
    import torch
    import transformers
    sizes = GPT2_SIZES if model_type == "gpt2" else LLAMA_SIZES
    config = transformers.AutoConfig.for_model(model_type, **{**sizes, "vocab_size": vocab_size,
                                                              "bos_token_id": 0, "eos_token_id": 0,
                                                              **overrides})
    from hf_helpers import redraw_parameters
    torch.manual_seed(seed)
    return redraw_parameters(transformers.AutoModelForCausalLM.from_config(config).eval(), seed + 1)


def hf_directory(path, model_type="qwen3", how="float32", pad_rows=0, seed=0, **overrides):
    """A Hugging Face directory as transformers writes it, with a tokenizer; returns the path."""
    import torch
    path = str(path)
    tokenizer = hf_tokenizer()
    if model_type == "qwen3":
        overrides = {"head_dim": 16, **overrides}
    model = hf_model(model_type, len(tokenizer) + pad_rows, seed, **overrides)
    if how == "sharded":
        model.save_pretrained(path, max_shard_size="20KB")
    elif how in ("bfloat16", "float16"):
        model.to(getattr(torch, how)).save_pretrained(path)
    else:
        model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def copy_directory(source, target):
    """A full copy (no links: a test damages the copy, never the original)."""
    shutil.copytree(source, target)
    return str(target)


def edit_json(path, change):
    """Apply change(dict) to the JSON file at `path` and write it back."""
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    change(data)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f)
    return path


def rewrite_tensors(path, change, file="model.safetensors", dtype=None):
    """Apply change({name: array}) to one safetensors file, keeping the metadata; dtype None
    keeps each tensor's stored dtype (bfloat16 via torch)."""
    import torch
    from safetensors.torch import load_file, save_file
    file = os.path.join(path, file)
    tensors = {k: v for k, v in load_file(file).items()}
    arrays = {k: v.float().numpy().copy() for k, v in tensors.items()}
    change(arrays)
    out = {}
    for k, v in arrays.items():
        stored = tensors[k].dtype if k in tensors and dtype is None else (dtype or torch.float32)
        t = torch.from_numpy(np.ascontiguousarray(v))
        out[k] = t if not t.is_floating_point() else t.to(stored)
    save_file(out, file, metadata={"format": "pt"})
    return file


def our_run(path, family="llama", max_steps=4, **flags):
    """A finished run of our trainer (CLI), tiny: returns its run directory."""
    from microgpt.cli import main
    from train_helpers import byte_tokenizer, tiny_corpus
    path.mkdir(parents=True, exist_ok=True)
    run_dir = str(path / "run")
    argv = ["train", "--family", family, "--bias", "false" if family == "llama" else "true",
            "--max-steps", str(max_steps), "--out-dir", run_dir, "--data", tiny_corpus(path),
            "--tokenizer", byte_tokenizer(path), "--n-layer", "1", "--n-head", "2", "--n-embd", "16",
            "--block-size", "16", "--batch-size", "4", "--eval-interval", str(max_steps),
            "--eval-batches", "1", "--checkpoint-interval", str(max_steps), "--log-interval", "1",
            "--num-samples", "0", "--progress", "false", "--val-fraction", "0.1"]
    for key, value in flags.items():
        argv += ["--" + key.replace("_", "-"), str(value)]
    assert main(argv) == 0
    return run_dir
