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
  - Buffers older checkpoints saved beside the weights (GPT-2's causal-mask `attn.bias`
    and `attn.masked_bias`, Llama's `rotary_emb.inv_freq`) are recomputed here, not loaded.
"""
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
    if file_name in ours:
        return file_name
    prefixed = BASE_PREFIX[family] + file_name
    return prefixed if prefixed in ours else None


def is_buffer(file_name):
    """A saved buffer (recomputed here), not a weight: safe to skip."""
    return file_name.endswith(BUFFER_SUFFIXES)
