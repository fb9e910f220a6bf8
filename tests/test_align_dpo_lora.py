"""DPO with LoRA (DPOOptions.lora_rank > 0): only the adapter matrices train, the loss falls, and
the merged model differs from the start only in the targeted layers, by a matrix of rank <= r."""
import numpy as np

from microgpt import GPT, GPTConfig
from microgpt.finetune import preference
from microgpt.finetune.dpo import DPOOptions, train_dpo
from microgpt.finetune.lora import base_state, is_adapter_name
from microgpt.tokenizer import Tokenizer
from microgpt.tokenizer.chat import with_chat_tokens
import microgpt.train.optim as optim

KV = [("a=1, b=2. What is b?", "2"), ("c=5, d=7, e=1. What is e?", "1"), ("x=3, y=9. What is x?", "3"),
      ("p=4, q=6. What is q?", "6")]
RANK = 2


def test_lora_dpo_trains_only_adapters_and_the_loss_falls(tmp_path, monkeypatch):
    tok = with_chat_tokens(Tokenizer.bytes_level())[0]

    def gpt():
        return GPT(GPTConfig(family="llama", vocab_size=tok.vocab_size, block_size=64, n_layer=2, n_head=2,
                             n_embd=16), seed=0)

    rows = [([{"role": "user", "content": p}], a, str((int(a) + 1) % 10)) for p, a in KV]
    pairs = preference.encode_pairs(tok, rows, 64)[0]
    policy, reference = gpt(), gpt().eval()
    before = base_state(policy)
    given = []
    adamw = optim.AdamW

    class SpyAdamW(adamw):
        def __init__(self, params, *args, **kwargs):
            given.extend(name for name, _ in params)
            super().__init__(params, *args, **kwargs)

    monkeypatch.setattr(optim, "AdamW", SpyAdamW)
    summary = train_dpo(policy, reference, pairs, DPOOptions(beta=0.5, lr=3e-2, epochs=30, batch_size=2,
                                                            lora_rank=RANK, lora_targets="q,v"),
                        str(tmp_path), lambda *a, **k: None)
    # the optimizer saw the adapters and nothing else: A and B of q_proj and v_proj in each layer
    assert given and all(is_adapter_name(n) for n in given)
    assert sorted({n.split(".lora_")[0] for n in given}) == sorted(
        f"model.layers.{i}.self_attn.{m}" for i in range(2) for m in ("q_proj", "v_proj"))
    assert len(given) == 2 * 2 * 2
    losses = summary["losses"]
    assert abs(losses[0] - np.log(2)) < 1e-6                          # policy == reference at the start
    assert np.mean(losses[-4:]) < 0.8 * losses[0] and summary["last"]["accuracy"] == 1.0
    # the merged model: untargeted weights bit for bit as before, q/v moved by a rank <= r delta
    after = base_state(policy)
    assert after.keys() == before.keys()
    moved = []
    for name, w in before.items():
        if name.endswith(("q_proj.weight", "v_proj.weight")):
            delta = after[name].astype(np.float64) - w
            assert np.abs(delta).max() > 0
            s = np.linalg.svd(delta, compute_uv=False)
            assert (s[RANK:] < 1e-5 * s[0]).all()                  # float32 merge rounding only
            moved.append(name)
        else:
            np.testing.assert_array_equal(after[name], w, err_msg=name)
    assert len(moved) == 4
