"""Tensor names and layouts: ours <-> a Hugging Face checkpoint's.

Our parameter names are the HF names already (nn/gpt.py names its modules after each
family's checkpoints), so the mapping is small:

  - GPT-2's attention and MLP matrices are HF `Conv1D`s, stored (in, out); Llama's are
    nn.Linear, stored (out, in). Our Linear holds either (GPTConfig.linear_layout, see
    nn/layers.py), so a tensor is transposed on the way in or out only where the model's
    layout is not the file's: a GPT-2 model in "in_out" (what load_pretrained builds) or a
    Llama in "out_in" takes the file's arrays as they are, and a GPT-2 in "out_in" (the
    default of `microgpt train`) transposes. A transpose is its own inverse, so one function
    maps both ways.
  - Tied embeddings: the one Parameter is reported under the embedding's name only (see
    nn/module.py), and HF's save_pretrained writes no lm_head.weight either. A file that
    has one anyway must hold the embedding's values.
  - Files written by a base model (GPT2Model, the original gpt2 weights) name tensors
    without the `transformer.` / `model.` prefix: a name that is ours once the prefix is
    added is taken with it, as transformers does.
  - Mixture-of-experts layers (nn/moe.py) stack each projection of all experts in one
    (E, out, in) parameter, `...mlp.experts.gate_proj`; the files hold one matrix per expert.
    Each expert's matrix is a *slice* of its parameter, named as Qwen3-MoE files name it,
    `...mlp.experts.{e}.gate_proj.weight` (expert_slice maps it back); Mixtral's files say
    `block_sparse_moe` for `mlp` and w1 / w3 / w2 for gate_proj / up_proj / down_proj, read
    by our_name and written by file_name.
  - Buffers older checkpoints saved beside the weights (GPT-2's causal-mask `attn.bias`
    and `attn.masked_bias`, Llama's `rotary_emb.inv_freq`) are recomputed here, not loaded.
"""
import re

import numpy as np

CONV1D_SUFFIXES = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
LINEAR_SUFFIXES = {"gpt2": CONV1D_SUFFIXES,
                   "llama": ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight",
                             "self_attn.o_proj.weight", "mlp.gate_proj.weight", "mlp.up_proj.weight",
                             "mlp.down_proj.weight")}
FILE_LAYOUT = {"gpt2": "in_out", "llama": "out_in"}    # how each family's HF files store them
BASE_PREFIX = {"gpt2": "transformer.", "llama": "model."}
BUFFER_SUFFIXES = (".attn.bias", ".attn.masked_bias", ".rotary_emb.inv_freq")
EMBEDDING = {"gpt2": "transformer.wte.weight", "llama": "model.embed_tokens.weight"}
LM_HEAD = "lm_head.weight"


def is_transposed(name, family, layout="out_in"):
    """Whether tensor `name` is stored transposed in the family's HF files, relative to a
    model whose blocks' Linear weights are in `layout` (GPTConfig.linear_layout)."""
    return layout != FILE_LAYOUT[family] and name.endswith(LINEAR_SUFFIXES[family])


def to_hf_layout(name, array, family, layout="out_in"):
    """One of our arrays in the HF file's layout (a view: the writer makes it contiguous)."""
    return array.T if is_transposed(name, family, layout) else array


def from_hf_layout(name, array, family, layout="out_in"):
    return to_hf_layout(name, array, family, layout)    # the transpose is its own inverse


def to_hf_tensors(state, family, layout="out_in"):
    """Our state_dict -> the tensors of the family's HF checkpoint, each contiguous (an array
    already in the file's layout is passed as it is, not copied)."""
    return {k: np.ascontiguousarray(to_hf_layout(k, v, family, layout)) for k, v in state.items()}


def from_hf_tensors(tensors, family, layout="out_in"):
    """Inverse of to_hf_tensors."""
    return to_hf_tensors(tensors, family, layout)


def our_name(file_name, family, ours):
    """The parameter of `ours` (a set of our names) that tensor `file_name` of an HF file
    holds, or None for one that is not a parameter (a buffer, or unexpected)."""
    file_name = _from_mixtral(file_name)
    if file_name in ours:
        return file_name
    prefixed = BASE_PREFIX[family] + file_name
    return prefixed if prefixed in ours else None


def is_buffer(file_name):
    """A saved buffer (recomputed here), not a weight: safe to skip."""
    return file_name.endswith(BUFFER_SUFFIXES)


# --- mixture-of-experts tensors: one file matrix per expert, one stacked parameter per projection ---

EXPERT_PROJECTIONS = ("gate_proj", "up_proj", "down_proj")
MIXTRAL_PROJECTIONS = {"w1": "gate_proj", "w3": "up_proj", "w2": "down_proj"}
_SLICE = re.compile(r"^(.*\.mlp\.experts)\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight$")
_MIXTRAL = re.compile(r"^(.*)\.block_sparse_moe\.(gate\.weight|experts\.(\d+)\.(w1|w2|w3)\.weight)$")


def is_stacked_experts(name, shape):
    """Whether parameter `name` is an MoE layer's stacked (E, out, in) projection."""
    return len(shape) == 3 and name.rsplit(".", 1)[-1] in EXPERT_PROJECTIONS and ".mlp.experts." in name


def expert_slices(name, shape):
    """[(slice name, expert index)] of a stacked parameter (see the header)."""
    base, projection = name.rsplit(".", 1)
    return [(f"{base}.{e}.{projection}.weight", e) for e in range(shape[0])]


def expert_slice(name):
    """(stacked parameter name, expert index) of a slice name, or None for any other name."""
    match = _SLICE.match(name)
    return None if match is None else (f"{match.group(1)}.{match.group(3)}", int(match.group(2)))


def file_shapes(shapes):
    """{our name: shape} with every stacked expert parameter replaced by its slices: the names
    and shapes of the tensors an HF file holds for this model."""
    out = {}
    for name, shape in shapes.items():
        if is_stacked_experts(name, shape):
            out.update({sliced: tuple(shape[1:]) for sliced, _ in expert_slices(name, shape)})
        else:
            out[name] = tuple(shape)
    return out


def _from_mixtral(file_name):
    match = _MIXTRAL.match(file_name)
    if match is None:
        return file_name
    if match.group(3) is None:
        return f"{match.group(1)}.mlp.gate.weight"
    return f"{match.group(1)}.mlp.experts.{match.group(3)}.{MIXTRAL_PROJECTIONS[match.group(4)]}.weight"


def file_name(ours, model_type):
    """The name an HF file of `model_type` gives our tensor (a slice name for experts)."""
    if model_type != "mixtral" or ".mlp." not in ours:
        return ours
    sliced = _SLICE.match(ours)
    if sliced is not None:
        w = {v: k for k, v in MIXTRAL_PROJECTIONS.items()}[sliced.group(3)]
        return f"{sliced.group(1).replace('.mlp.experts', '.block_sparse_moe.experts')}.{sliced.group(2)}.{w}.weight"
    return ours.replace(".mlp.gate.weight", ".block_sparse_moe.gate.weight")
