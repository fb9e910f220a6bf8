"""A Linear's weight in either layout: (out, in) as PyTorch's Linear, or (in, out) as GPT-2's
Conv1D stores it (GPTConfig.linear_layout "in_out"), which is how a GPT-2 checkpoint loads
without a copy (its matrices are views of the file's mapping).

The oracles: the NumPy reference for the kernels (the C few-rows path of each layout, the
threaded one, the packed product); the same model in the other layout (a seed draws the
same map in both; a GPT-2 checkpoint loads into either), whose logits, losses, updates and
samples must agree; transformers for the loaded and the exported model. The gradient check
of the op in this layout is in test_gradcheck.py, the CUDA binding's in test_cuda_kernels.py,
the special values in test_kernel_special_values.py.
"""
import mmap
import os

import numpy as np
import pytest

from microgpt import backends, ops
from microgpt.backends import reference as ref
from microgpt.errors import ConfigError
from microgpt.nn import GPT, GPTConfig
from microgpt.nn.layers import Linear
from microgpt.tensor import Tensor

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")
pytest.importorskip("microgpt.tokenizer.hf")

from microgpt.cli import main  # noqa: E402
from microgpt.inference.decode import Decoder  # noqa: E402
from microgpt.interop import export_hf, load_hf_directory, load_pretrained  # noqa: E402
from microgpt.train import checkpoint as ckpt  # noqa: E402
from microgpt.train.config import make_config  # noqa: E402
from microgpt.train.optim import AdamW  # noqa: E402
from microgpt.train.trainer import resume, train  # noqa: E402
from model_dirs import hf_directory  # noqa: E402
from train_helpers import losses, quiet, tiny_corpus  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")
CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def rand(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def f64(a):
    return None if a is None else a.astype(np.float64)


# --- the kernels -------------------------------------------------------------------------------------

needs_c = pytest.mark.skipif("cpu" not in backends.available(), reason="the C kernels are not built")


@needs_c
@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 37])
@pytest.mark.parametrize("C,OC", [(1, 1), (7, 63), (9, 17), (300, 1040), (1030, 130), (257, 131)])
@pytest.mark.parametrize("bias", [True, False])
def test_c_linear_in_out_equals_the_reference(rows, C, OC, bias):
    """rows <= 4 take the few-rows path of the (in, out) layout (threaded from C x OC = 131072
    on: the last three shapes), more rows the packed product; odd C and OC reach every tail."""
    from microgpt.backends import cpu
    rng = np.random.default_rng(rows * 1000 + C)
    x, w = rand(rng, rows, C), rand(rng, C, OC)
    b = rand(rng, OC) if bias else None
    got = cpu.linear_forward(x, w, b, True)
    want = ref.linear_forward(f64(x), f64(w), f64(b), True)
    np.testing.assert_allclose(got, want, atol=1e-4 * np.sqrt(C), rtol=2e-4)
    # the same map stored (out, in): the other layout's kernel on the transpose
    np.testing.assert_allclose(got, cpu.linear_forward(x, np.ascontiguousarray(w.T), b), atol=1e-4 * np.sqrt(C),
                               rtol=2e-4)
    dout = rand(rng, rows, OC)
    dx, dw, db = cpu.linear_backward(dout, x, w, bias, True)
    rdx, rdw, rdb = ref.linear_backward(f64(dout), f64(x), f64(w), bias, True)
    assert dw.shape == w.shape
    np.testing.assert_allclose(dx, rdx, atol=1e-4 * np.sqrt(OC), rtol=2e-4)
    np.testing.assert_allclose(dw, rdw, atol=1e-4 * np.sqrt(rows), rtol=2e-4)
    assert (db is None) == (not bias)
    if bias:
        np.testing.assert_allclose(db, rdb, atol=1e-4 * np.sqrt(rows), rtol=2e-4)


@needs_c
def test_c_linear_refuses_a_weight_of_the_other_layout():
    from microgpt.backends import cpu
    from microgpt.errors import ShapeError
    x, w = np.ones((2, 3), np.float32), np.ones((4, 3), np.float32)
    with pytest.raises(ShapeError, match="w"):
        cpu.linear_forward(x, w, None, True)
    with pytest.raises(Exception, match="w_in_out must be True or False"):
        cpu.linear_forward(x, w, None, "yes")


@pytest.mark.parametrize("backend_name", backends.available()[:2])
def test_a_frozen_in_out_weight_sends_dx_only(backend_name):
    """LoRA's frozen base: dx = dout @ W without the dW product, in both layouts."""
    rng = np.random.default_rng(1)
    x = Tensor(rand(rng, 3, 5), requires_grad=True)
    w = rand(rng, 5, 7)
    with backends.using(backend_name):
        for weight, in_out in ((w, True), (np.ascontiguousarray(w.T), False)):
            x.grad = None
            frozen = Tensor(weight, requires_grad=False)
            ops.linear(x, frozen, None, in_out).sum().backward()
            np.testing.assert_allclose(x.grad.numpy() if hasattr(x.grad, "numpy") else x.grad,
                                       np.ones((3, 7)) @ w.T, rtol=1e-5, atol=1e-5)


# --- the layer and the model ---------------------------------------------------------------------------

TINY = dict(vocab_size=61, block_size=16, n_layer=2, n_head=2, n_embd=16)


def test_the_layout_is_checked_and_shapes_the_weight():
    assert Linear(3, 5).weight.shape == (5, 3)
    assert Linear(3, 5, weight_layout="in_out").weight.shape == (3, 5)
    with pytest.raises(ConfigError, match="weight_layout"):
        Linear(3, 5, weight_layout="transposed")
    with pytest.raises(ConfigError, match="linear_layout"):
        GPTConfig(**TINY, linear_layout="io")


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_a_seed_draws_the_same_model_in_either_layout(family):
    a = GPT(GPTConfig(**TINY, family=family), seed=4)
    b = GPT(GPTConfig(**TINY, family=family, linear_layout="in_out"), seed=4)
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    for name, p in pa.items():
        q = pb[name].numpy()
        np.testing.assert_array_equal(p.numpy(), q.T if p.shape != q.shape or _is_block_matrix(name) else q)
    ids = np.random.default_rng(0).integers(0, 61, (2, 9))
    np.testing.assert_allclose(a(ids)[0].numpy(), b(ids)[0].numpy(), rtol=1e-6, atol=1e-6)


def _is_block_matrix(name):
    return name.endswith(CONV1D) or name.endswith(("q_proj.weight", "k_proj.weight", "v_proj.weight",
                                                   "o_proj.weight", "gate_proj.weight", "up_proj.weight",
                                                   "down_proj.weight"))


# --- a GPT-2 checkpoint ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    return hf_directory(tmp_path_factory.mktemp("gpt2") / "model", "gpt2")


def _maps_the_file(array):
    base = array
    while base is not None and not isinstance(base, mmap.mmap):
        base = base.obj if isinstance(base, memoryview) else getattr(base, "base", None)
    return isinstance(base, mmap.mmap)


def test_a_float32_gpt2_checkpoint_loads_as_views_of_the_file(gpt2_dir):
    model = load_pretrained(gpt2_dir)
    assert model.config.linear_layout == "in_out"
    matrices = {n: p for n, p in model.named_parameters() if n.endswith(CONV1D)}
    assert len(matrices) == 4 * model.config.n_layer
    assert all(_maps_the_file(p.data) for p in model.parameters())     # nothing copied, Conv1D included
    copied = load_pretrained(gpt2_dir, linear_layout="out_in")          # the old way: transposed copies
    assert not any(_maps_the_file(p.data) for n, p in copied.named_parameters() if n.endswith(CONV1D))


def transformers_logits(path, ids):
    hf = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    with torch.no_grad():
        return hf(torch.tensor(ids)).logits.numpy()


@pytest.mark.parametrize("layout", ["in_out", "out_in"])
def test_either_layout_gives_transformers_logits(gpt2_dir, layout):
    ids = np.random.default_rng(2).integers(0, 300, (2, 12))
    theirs = transformers_logits(gpt2_dir, ids)
    ours = load_pretrained(gpt2_dir, linear_layout=layout)(ids)[0].numpy()
    assert np.abs(ours - theirs).max() / np.abs(theirs).max() < 1e-4


def test_training_steps_agree_between_the_layouts(gpt2_dir):
    """A loaded GPT-2 trains (its mapped pages copied on write, the file untouched), with the
    same losses and updates as the same model held (out, in)."""
    before = open(os.path.join(gpt2_dir, "model.safetensors"), "rb").read()
    models = [load_pretrained(gpt2_dir, linear_layout=layout).train() for layout in ("in_out", "out_in")]
    optimizers = [AdamW(m.named_parameters(), weight_decay=0.1) for m in models]
    rng = np.random.default_rng(3)
    for _ in range(4):
        x = rng.integers(0, 300, (2, 12))
        y = rng.integers(0, 300, (2, 12))
        step_losses = []
        for model, opt in zip(models, optimizers):
            opt.zero_grad()
            _, loss = model(x, y)
            loss.backward()
            opt.step(1e-3)
            step_losses.append(loss.item())
        assert abs(step_losses[0] - step_losses[1]) <= 1e-6 * abs(step_losses[1]), step_losses
    a, b = (dict(m.named_parameters()) for m in models)
    for name, p in a.items():
        other = b[name].numpy()
        np.testing.assert_allclose(p.numpy(), other.T if name.endswith(CONV1D) else other, rtol=1e-5, atol=1e-6)
    assert open(os.path.join(gpt2_dir, "model.safetensors"), "rb").read() == before


def test_decoding_runs_either_layout(gpt2_dir):
    ids = np.random.default_rng(5).integers(0, 300, (1, 7))
    logits = []
    for layout in ("in_out", "out_in"):
        model = load_pretrained(gpt2_dir, linear_layout=layout)
        assert Decoder.supports(model)
        decoder = Decoder(model)
        first = decoder.step(ids)                     # the prompt, then one token at a time
        steps = [decoder.step(np.array([[t]])) for t in (3, 14, 15)]
        full = model(np.concatenate([ids, [[3, 14, 15]]], axis=1))[0].numpy()
        np.testing.assert_allclose(first, full[:, 6], rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(steps[-1], full[:, -1], rtol=1e-4, atol=1e-4)
        logits.append(np.stack([first] + steps))
    np.testing.assert_allclose(logits[0], logits[1], rtol=1e-4, atol=1e-5)


def test_an_in_out_model_exports_untransposed_and_transformers_loads_it(gpt2_dir, tmp_path):
    from safetensors.numpy import load_file
    loaded = load_hf_directory(gpt2_dir)
    out = export_hf(loaded.model, loaded.tokenizer, tmp_path / "back")
    original, written = (load_file(os.path.join(d, "model.safetensors")) for d in (gpt2_dir, out))
    for name, value in original.items():
        np.testing.assert_array_equal(written[name], value, err_msg=name)        # bit for bit
    ids = np.random.default_rng(6).integers(0, 300, (2, 10))
    hf, info = transformers.AutoModelForCausalLM.from_pretrained(str(out), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    np.testing.assert_allclose(transformers_logits(str(out), ids), transformers_logits(gpt2_dir, ids), rtol=0, atol=0)
    # the same model held (out, in) writes the same file
    out2 = export_hf(load_pretrained(gpt2_dir, linear_layout="out_in"), None, tmp_path / "back2")
    written2 = load_file(os.path.join(out2, "model.safetensors"))
    assert all(np.array_equal(written2[k], v) for k, v in original.items())


def test_checkpoints_of_both_layouts_save_and_load(gpt2_dir, tmp_path):
    for layout in ("in_out", "out_in"):
        loaded = load_hf_directory(gpt2_dir, linear_layout=layout)
        state = loaded.model.state_dict()
        c = ckpt.Checkpoint(0, loaded.model.config.to_dict(), state, loaded.tokenizer, {})
        path = ckpt.save(str(tmp_path / layout), c)
        model = ckpt.load_model(path)[0]
        assert model.config.linear_layout == layout
        again = model.state_dict()
        assert all(np.array_equal(again[k], v) for k, v in state.items())
        # the file holds GPT-2's layout whatever ours: transformers reads the same tensors
        from safetensors.numpy import load_file
        stored = load_file(os.path.join(path, "model.safetensors"))
        original = load_file(os.path.join(gpt2_dir, "model.safetensors"))
        assert all(np.array_equal(stored[k], original[k]) for k in original)


def test_inspect_names_the_layout(gpt2_dir, tmp_path, capsys):
    assert main(["inspect", gpt2_dir]) == 0
    out = capsys.readouterr().out
    assert "linear_layout=in_out" in out and "(transposed)" not in out
    loaded = load_hf_directory(gpt2_dir, linear_layout="out_in")
    path = ckpt.save(str(tmp_path / "ours"), ckpt.Checkpoint(0, loaded.model.config.to_dict(),
                                                              loaded.model.state_dict(), loaded.tokenizer, {}))
    assert main(["inspect", path]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("transformer.h.0.mlp.c_fc.weight "))
    assert "linear_layout=out_in" in out and "(transposed)" in row


def test_a_run_from_gpt2_trains_saves_and_resumes_bit_for_bit(gpt2_dir, tmp_path):
    corpus = tiny_corpus(tmp_path, documents=40)
    run = dict(batch_size=2, block_size=16, max_steps=4, lr=1e-3, min_lr=1e-4, warmup_steps=0, log_interval=1,
               eval_interval=2, eval_batches=1, checkpoint_interval=2, num_samples=0, progress=False,
               val_fraction=0.1, init_from=gpt2_dir, data=corpus)
    straight = train(make_config("demo", None, dict(run, out_dir=str(tmp_path / "straight"))), log=quiet)
    halves = make_config("demo", None, dict(run, out_dir=str(tmp_path / "halves")))
    train(halves, log=quiet, stop_at_step=2)
    assert resume(halves.out_dir, log=quiet)["steps"] == 4
    assert losses(halves.out_dir) == losses(straight["run_dir"])
    model = ckpt.load_model(halves.out_dir)[0]
    assert model.config.linear_layout == "in_out"
    out = tmp_path / "exported"
    assert main(["convert", halves.out_dir, str(out)]) == 0
    ids = np.random.default_rng(7).integers(0, 300, (2, 16))
    theirs = transformers_logits(str(out), ids)
    assert np.abs(model.eval()(ids)[0].numpy() - theirs).max() / np.abs(theirs).max() < 1e-4
