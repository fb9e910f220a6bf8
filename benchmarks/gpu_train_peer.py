"""The PyTorch peer of one GPT-2 training step, for benchmarks/gpu_check.py.

TorchGPT2 is GPT-2 written plainly in PyTorch eager mode (no torch.compile, float32, TF32
off), with microgpt's parameter names, so `load_state_dict` takes microgpt's state_dict
as is: same weights, same layout of the fused c_attn projection (q | k | v, heads
contiguous), tanh-GELU, LayerNorm eps 1e-5, tied lm_head, mean cross-entropy.
`make_optimizer` mirrors microgpt.train.optim.AdamW's grouping: matrices decay, biases,
norm gains and the embedding tables do not.
"""
import torch
import torch.nn.functional as F
from torch import nn


class Block(nn.Module):
    def __init__(self, c, n_head, eps):
        super().__init__()
        self.n_head = n_head
        self.ln_1 = nn.LayerNorm(c, eps=eps)
        self.attn = nn.Module()
        self.attn.c_attn = nn.Linear(c, 3 * c)
        self.attn.c_proj = nn.Linear(c, c)
        self.ln_2 = nn.LayerNorm(c, eps=eps)
        self.mlp = nn.Module()
        self.mlp.c_fc = nn.Linear(c, 4 * c)
        self.mlp.c_proj = nn.Linear(4 * c, c)

    def forward(self, x):
        b, t, c = x.shape
        qkv = self.attn.c_attn(self.ln_1(x))                                   # (B, T, 3C)
        q, k, v = (z.view(b, t, self.n_head, c // self.n_head).transpose(1, 2) for z in qkv.split(c, dim=2))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)            # (B, NH, T, HS)
        x = x + self.attn.c_proj(y.transpose(1, 2).reshape(b, t, c))
        return x + self.mlp.c_proj(F.gelu(self.mlp.c_fc(self.ln_2(x)), approximate="tanh"))


class TorchGPT2(nn.Module):
    def __init__(self, vocab_size, block_size, n_layer, n_head, n_embd, eps=1e-5):
        super().__init__()
        self.transformer = nn.Module()
        self.transformer.wte = nn.Embedding(vocab_size, n_embd)
        self.transformer.wpe = nn.Embedding(block_size, n_embd)
        self.transformer.h = nn.ModuleList([Block(n_embd, n_head, eps) for _ in range(n_layer)])
        self.transformer.ln_f = nn.LayerNorm(n_embd, eps=eps)

    def forward(self, idx, targets):
        tr = self.transformer
        pos = torch.arange(idx.shape[1], device=idx.device)
        x = tr.wte(idx) + tr.wpe(pos)
        for block in tr.h:
            x = block(x)
        logits = tr.ln_f(x) @ tr.wte.weight.T                                  # tied lm_head
        return F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.view(-1))


def make_optimizer(model, lr, weight_decay=0.1, betas=(0.9, 0.95), eps=1e-8):
    def decays(name, p):                   # matrices decay; biases, gains and embeddings do not
        return p.dim() >= 2 and not name.endswith(("wte.weight", "wpe.weight"))
    decay = [p for n, p in model.named_parameters() if decays(n, p)]
    rest = [p for n, p in model.named_parameters() if not decays(n, p)]
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}],
                             lr=lr, betas=betas, eps=eps, foreach=True)


def peer_from_state(config, state, lr, device="cuda"):
    """The peer built from our model's weights (a {name: array} of GPT-2 names; the tied
    lm_head is the only name allowed missing) and its optimizer, on `device`."""
    model = TorchGPT2(config.vocab_size, config.block_size, config.n_layer, config.n_head, config.n_embd,
                      config.norm_eps).to(device)
    missing, unexpected = model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=False)
    if unexpected or any(not m.endswith("lm_head.weight") for m in missing):
        raise RuntimeError(f"peer weights do not match: missing {missing}, unexpected {unexpected}")
    return model, make_optimizer(model, lr)
