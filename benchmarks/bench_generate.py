"""Generation speed: microgpt's KV-cache engine vs Hugging Face transformers, batch 1.

The model is a GPT-2 of 6 layers, 384 channels, 6 heads, vocab 8192 (the `small` preset's
shape) with random weights built from a config — nothing is downloaded. Both sides hold the
*same* weights (ours are written into GPT2LMHeadModel through the checkpoint's name and
layout mapping) and decode greedily from the same 16-token prompt, 256 new tokens, with a
KV cache (`use_cache=True` for HF; HF is told to ignore end-of-text so both make exactly
256 tokens). The check compares the prompt's logits and the first greedy tokens.

Both libraries run OpenMP thread teams on the same 2 cores, in one process, so they share one
libgomp and one wait policy. The benchmark sets what `microgpt generate` runs under
(cli.openmp_environment: OMP_WAIT_POLICY=PASSIVE with a 20,000-iteration spin first, unless
already set) for both. Until 2026-12-01 it set pure PASSIVE, which measured against HF: its
generate of 128 tokens on this model in a process of its own ran 103-109 tokens/s under
libgomp's default, 79-89 under pure PASSIVE and 102-117 under PASSIVE with the spin (two runs
each, load ~1), so the spin gives HF what its default gives it.

Rows: tokens/s of our engine on the default CPU backend (the C kernels when built), and with
--reference also on the NumPy reference backend, each beside HF measured in the same run;
ratio > 1 means we are faster. At this model size the ratio mostly measures HF's per-token
overhead (attention and KV-cache calls sized for one token, Python), not the weight streaming
both sides must do; results/generate.md has the profile.

    python benchmarks/bench_generate.py [--quick] [--json FILE] [--reference]
"""
import os
import sys

from microgpt.cli import openmp_environment   # before any OpenMP runtime starts

openmp_environment("generate")

import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE]

import harness  # noqa: E402
from microgpt import backends  # noqa: E402
from microgpt.inference.engine import Engine  # noqa: E402
from microgpt.inference.sampling import SamplingConfig  # noqa: E402
from microgpt.nn import GPT, GPTConfig  # noqa: E402
from microgpt.tensor import no_grad  # noqa: E402
from microgpt.train.checkpoint import to_hf_tensors  # noqa: E402

LAYERS, CHANNELS, HEADS, VOCAB, CONTEXT = 6, 384, 6, 8192, 512
PROMPT = 16


def hf_model(model):
    """GPT2LMHeadModel with our model's weights, or None when transformers is missing."""
    try:
        import torch
        import transformers
    except ImportError as exc:
        print(f"transformers/torch not installed ({exc}); reporting ours only")
        return None
    config = transformers.GPT2Config(vocab_size=VOCAB, n_positions=CONTEXT, n_embd=CHANNELS,
                                     n_layer=LAYERS, n_head=HEADS, activation_function="gelu_new",
                                     tie_word_embeddings=True)
    hf = transformers.GPT2LMHeadModel(config).eval()
    state = {k: torch.tensor(v) for k, v in to_hf_tensors(model.state_dict(), "gpt2").items()}
    missing, unexpected = hf.load_state_dict(state, strict=False)
    assert not unexpected and all(k.endswith(("attn.bias", "lm_head.weight")) for k in missing), \
        (missing, unexpected)
    hf.tie_weights()
    return hf


def hf_callables(hf, model, prompt, new_tokens, ours):
    """(peer, check) for the harness: HF's greedy generation, and the agreement check."""
    if hf is None:
        return None, None
    import torch
    ids = torch.tensor([prompt])

    def peer():
        with torch.no_grad():
            out = hf.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                              do_sample=False, use_cache=True, eos_token_id=None,
                              pad_token_id=0, attention_mask=torch.ones_like(ids))
        assert out.shape[1] == PROMPT + new_tokens
        return out[0, PROMPT:].tolist()

    def check():
        with no_grad():
            logits = model(np.array([prompt]))[0].numpy()
        with torch.no_grad():
            expected = hf(ids).logits.numpy()
        np.testing.assert_allclose(logits, expected, atol=2e-4, rtol=1e-3)
        assert ours()[:8] == peer()[:8], "the first greedy tokens differ"
    return peer, check


def main():
    args = harness.parse_args(__doc__.splitlines()[0], extra=lambda p: p.add_argument(
        "--reference", action="store_true", help="also time the NumPy reference backend"))
    new_tokens = 64 if args.quick else 256
    repeats = 2 if args.quick else 5
    config = GPTConfig(family="gpt2", vocab_size=VOCAB, block_size=CONTEXT, n_layer=LAYERS,
                       n_head=HEADS, n_embd=CHANNELS)
    model = GPT(config, seed=0).eval()
    prompt = np.random.default_rng(0).integers(0, VOCAB, size=PROMPT).tolist()
    greedy = SamplingConfig(temperature=0)
    engine = Engine(model)
    hf = hf_model(model)

    def ours_on(backend):
        def run():
            with backends.using(backend):
                out = engine.generate_ids([prompt], new_tokens, greedy, stop_ids=())[0]
            assert len(out.ids) == new_tokens
            return out.ids
        return run

    peer, check = hf_callables(hf, model, prompt, new_tokens, ours_on(backends.current("cpu")))
    cases = []
    names = [backends.current("cpu")]
    if args.reference and names[0] != "reference":
        names.append("reference")
    for backend in names:
        cases.append(harness.Case(
            name=f"generate {new_tokens} tokens, batch 1, {backend}", ours=ours_on(backend),
            peer=peer, peer_name="HF transformers GPT2LMHeadModel (use_cache)", unit="tokens/s",
            work=new_tokens, check=check if backend == backends.current("cpu") else None,
            repeats=repeats, warmup=1))
    title = (f"generation, GPT-2 {LAYERS}L x {CHANNELS}C, {HEADS} heads, vocab {VOCAB}, "
             f"prompt {PROMPT}, greedy, KV cache")
    harness.run_cases(cases, args, title)


if __name__ == "__main__":
    main()
