"""Alignment speed: rollout generation and a DPO step, microgpt vs the PyTorch stack.

Model: the demo shape (llama, 4 layers x 96 channels, 4 heads, vocab 2050 with the two
ChatML tokens), random weights from a seed, nothing downloaded. The peer holds the *same*
weights: our model exported with interop/hf.py's export_hf and read by transformers'
LlamaForCausalLM.from_pretrained.

Rows:
  rollout tokens/s   16 prompts of 24 tokens x 64 new tokens, batched, greedy, KV cache:
                     our Engine.generate_ids (batch_invariant=False: what PPO and GRPO
                     roll out with) vs HF's batched
                     generate (use_cache, no end-of-text stop); target >= 2x
  dpo step           one DPO step (forward of chosen+rejected rows, sequence log-probs on
                     the response tokens, the loss with cached reference log-probs, backward,
                     AdamW) on 8 pairs of 40-token sequences: ours (finetune/dpo.py's pieces)
                     vs the same step in PyTorch eager on the HF model (log_softmax + gather,
                     -logsigmoid, torch.optim.AdamW); target >= 1.0x

The check compares the prompt logits and the first greedy tokens, and the first DPO loss.
Both sides run OpenMP on the same cores, in one process (one libgomp, one wait policy): what
`microgpt generate` sets, PASSIVE after a 20,000-iteration spin, as in bench_generate.py (pure
PASSIVE, used until 2026-12-01, cost HF's generate ~20 % measured alone; see generate.md).

    python benchmarks/bench_align.py [--quick] [--json FILE]
"""
import os
import sys
import tempfile

from microgpt.cli import openmp_environment   # before any OpenMP runtime starts

openmp_environment("generate")

import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE]

import harness  # noqa: E402
from microgpt.finetune.rl_common import Sequences, clip_and_step, dpo_loss, sequence_logprobs  # noqa: E402
from microgpt.inference.engine import Engine  # noqa: E402
from microgpt.inference.sampling import SamplingConfig  # noqa: E402
from microgpt.interop.hf import export_hf  # noqa: E402
from microgpt.nn import GPT, GPTConfig  # noqa: E402
from microgpt.tensor import no_grad  # noqa: E402
from microgpt.tokenizer import Tokenizer  # noqa: E402
from microgpt.train.optim import AdamW  # noqa: E402

PROMPTS, PROMPT_LEN, NEW = 16, 24, 64
PAIRS, SEQ, RESPONSE = 8, 40, 8


def build():
    config = GPTConfig(family="llama", vocab_size=2050, block_size=256, n_layer=4, n_head=4,
                       n_embd=96, mlp_hidden=256)
    return GPT(config, seed=0)


def hf_of(model):
    import torch
    import transformers
    tokenizer = Tokenizer.bytes_level()
    out = tempfile.mkdtemp(prefix="bench_align_")
    export_hf(model, tokenizer, out, overwrite=True)
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, torch_dtype=torch.float32).eval()
    return hf


def main():
    import torch
    import torch.nn.functional as F
    args = harness.parse_args(__doc__.splitlines()[0])
    repeats = 2 if args.quick else 5
    rng = np.random.default_rng(0)
    model = build().eval()
    hf = hf_of(model)
    prompts = rng.integers(0, 2048, size=(PROMPTS, PROMPT_LEN)).tolist()
    greedy = SamplingConfig(temperature=0)
    engine = Engine(model, batch_invariant=False)      # as finetune/ppo.py's rollout

    def ours_rollout():
        outs = engine.generate_ids(prompts, NEW, greedy, stop_ids=())
        assert all(len(o.ids) == NEW for o in outs)
        return [o.ids for o in outs]

    ids = torch.tensor(prompts)

    def peer_rollout():
        with torch.no_grad():
            out = hf.generate(ids, max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False, use_cache=True,
                              eos_token_id=None, pad_token_id=0, attention_mask=torch.ones_like(ids))
        return out[:, PROMPT_LEN:].tolist()

    def check_rollout():
        with no_grad():
            logits = model(np.array(prompts[:2]))[0].numpy()
        with torch.no_grad():
            expected = hf(ids[:2]).logits.numpy()
        np.testing.assert_allclose(logits, expected, atol=2e-4, rtol=1e-3)
        assert [r[:8] for r in ours_rollout()[:4]] == [r[:8] for r in peer_rollout()[:4]]

    # --- one DPO step on both sides, same weights, same batch ----------------------------------
    prompt_part = rng.integers(0, 2048, size=(PAIRS, SEQ - RESPONSE)).tolist()
    responses = rng.integers(0, 2048, size=(2 * PAIRS, RESPONSE)).tolist()
    seqs = Sequences([p for p in prompt_part for _ in range(2)], responses)
    ref = rng.normal(-60, 1, size=(2, PAIRS))
    policy = build().train()
    params = list(policy.named_parameters())
    optimizer = AdamW(params, 0.0)
    peer_model = hf_of(policy).train()
    peer_opt = torch.optim.AdamW(peer_model.parameters(), lr=1e-6, weight_decay=0.0, betas=(0.9, 0.95))
    t_ids = torch.tensor(seqs.ids[:, :-1])
    t_targets = torch.tensor(seqs.ids[:, 1:])
    t_mask = torch.tensor(seqs.response_mask, dtype=torch.float32)
    t_ref = torch.tensor(ref, dtype=torch.float32)

    def ours_dpo():
        lp = sequence_logprobs(policy, seqs)
        loss, _ = dpo_loss(lp[0::2], lp[1::2], ref[0], ref[1], 0.1)
        loss.backward()
        clip_and_step(optimizer, params, 1e-6)
        return loss.item()

    def peer_dpo():
        logits = peer_model(t_ids).logits
        logp = torch.log_softmax(logits, -1).gather(-1, t_targets[..., None])[..., 0]
        lp = (logp * t_mask).sum(1)
        x = (lp[0::2] - t_ref[0]) - (lp[1::2] - t_ref[1])
        loss = -F.logsigmoid(0.1 * x).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(peer_model.parameters(), 1.0)
        peer_opt.step()
        peer_opt.zero_grad()
        return loss.item()

    def check_dpo():
        a, b = ours_dpo(), peer_dpo()
        assert abs(a - b) < 1e-3, (a, b)

    cases = [
        harness.Case(name=f"rollout tokens/s ({PROMPTS} prompts x {NEW} new tokens, batched)", ours=ours_rollout,
                     peer=peer_rollout, peer_name="HF transformers batched generate (use_cache)",
                     unit="tokens/s", work=PROMPTS * NEW, check=check_rollout, repeats=repeats),
        harness.Case(name=f"dpo step ({PAIRS} pairs, T {SEQ})", ours=ours_dpo, peer=peer_dpo,
                     peer_name="PyTorch eager DPO step (HF LlamaForCausalLM)", unit="ms",
                     check=check_dpo, repeats=repeats * 2),
    ]
    harness.run_cases(cases, args, "alignment: rollouts and a DPO step, demo shape (llama 4L x 96C)")


if __name__ == "__main__":
    main()
