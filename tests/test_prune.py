"""Pruning: the 2:4 pattern holds, magnitude sparsity is exact per layer, masks survive the
recovery fine-tune and its checkpoints, and the perplexity reported is the evaluator's.

The oracle for which weights go is a brute-force loop over every group of 4 (2:4) and a sort of
each layer's |w| (magnitude), written here independently of the vectorized masks.
"""
import itertools
import json
import os

import numpy as np
import pytest

from microgpt.cli import main
from microgpt.errors import ConfigError
from microgpt.quantize.prune import (MASKS_FILE, load_masks, magnitude_mask, prunable_linears, prune_model,
                                     two_four_mask)
from microgpt.train import checkpoint as ckpt
from model_dirs import our_run


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return our_run(tmp_path_factory.mktemp("prune"), family="llama", max_steps=4)


@pytest.mark.parametrize("shape,in_axis", [((3, 8), 1), ((8, 5), 0), ((1, 4), 1), ((6, 12), 1)])
def test_two_four_keeps_the_two_largest_of_every_four(shape, in_axis):
    w = np.random.default_rng(sum(shape)).standard_normal(shape)
    mask = two_four_mask(w, in_axis)
    rows = np.moveaxis(w, in_axis, -1)
    kept = np.moveaxis(mask, in_axis, -1)
    for index in itertools.product(*(range(n) for n in rows.shape[:-1])):
        for g in range(0, rows.shape[-1], 4):
            group, keep = np.abs(rows[index][g:g + 4]), kept[index][g:g + 4]
            assert keep.sum() == 2
            assert group[keep].min() >= group[~keep].max()
    assert mask.mean() == 0.5


def test_two_four_refuses_inputs_not_in_fours():
    with pytest.raises(ConfigError, match="groups of 4"):
        two_four_mask(np.ones((3, 6)), 1, "mlp.up_proj.weight")


@pytest.mark.parametrize("sparsity", [0.0, 0.25, 0.5, 0.75, 0.3])
def test_magnitude_sparsity_is_exact_and_drops_the_smallest(sparsity):
    w = np.random.default_rng(5).standard_normal((7, 9))
    mask = magnitude_mask(w, sparsity)
    assert (~mask).sum() == round(sparsity * w.size)
    if 0 < sparsity:
        assert np.abs(w[mask]).min() >= np.abs(w[~mask]).max()


@pytest.mark.parametrize("method,sparsity", [("magnitude", 0.5), ("magnitude", 0.75), ("2:4", 0.5)])
def test_prune_model_zeroes_every_block_linear_and_nothing_else(run, method, sparsity):
    model, _, _ = ckpt.load_model(run)
    before = {k: v.copy() for k, v in model.state_dict().items()}
    masks = prune_model(model, method, sparsity)
    after = model.state_dict()
    assert set(masks) == set(prunable_linears(model)) and "lm_head.weight" not in masks
    for name, value in after.items():
        if name in masks:
            assert (value == 0).sum() >= round(sparsity * value.size)
            np.testing.assert_array_equal(value[masks[name]], before[name][masks[name]])
            assert np.all(value[~masks[name]] == 0)
        else:
            np.testing.assert_array_equal(value, before[name])


def test_masks_survive_recovery_and_checkpoints(run, tmp_path, capsys):
    out = str(tmp_path / "pruned")
    assert main(["prune", run, "--method", "2:4", "--recover-steps", "3", "--out", out, "--eval-batches", "1",
                 "--batch-size", "2"]) == 0
    assert "2:4: 50.0% zeros" in capsys.readouterr().out
    report = json.load(open(os.path.join(out, "pruning.json")))
    assert report["sparsity"] == 0.5 and report["sparsity_after"] == 0.5
    assert np.isfinite([report[k] for k in ("dense_perplexity", "pruned_perplexity", "recovered_perplexity")]).all()
    newest = ckpt.latest(out)
    assert newest.endswith("step_000003")
    masks = load_masks(os.path.join(newest, MASKS_FILE))
    model, _, _ = ckpt.load_model(out)                 # the recovered weights, read back
    weights = model.state_dict()
    step0 = ckpt.load_model(ckpt.list_complete(out)[0][1])[0].state_dict()
    moved = 0
    for name, mask in masks.items():
        assert np.all(weights[name][~mask] == 0)
        assert np.all(mask.reshape(-1, 4).sum(-1) == 2)          # (out, in): groups along the inputs
        np.testing.assert_array_equal(step0[name] != 0, mask)
        moved += int(np.any(weights[name][mask] != step0[name][mask]))
    assert moved > 0                                   # the recovery did train the kept weights


def test_bad_requests_are_clear_errors(run, tmp_path, capsys):
    assert main(["prune", run, "--method", "2:4", "--sparsity", "0.75", "--out", str(tmp_path / "x")]) == 2
    assert "2:4 pruning is 50 %" in capsys.readouterr().err
