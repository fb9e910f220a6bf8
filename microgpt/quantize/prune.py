"""Pruning: zero a fraction of the Linear weights, optionally recover with a short fine-tune.

`microgpt prune RUN --method magnitude|2:4 [--sparsity 0.5] [--recover-steps N] --out DIR`.
The Linear layers of the blocks are pruned (attention and MLP projections); the embedding and
the LM head (often one tied matrix) are kept whole: a zeroed embedding row is a token the
model can no longer read.

magnitude  Unstructured: in each layer, the round(sparsity * size) weights of smallest |w| are
           zeroed, exactly that many (ties broken by position). Per layer, not global: the
           layers' weight scales differ (the residual projections start at 1 / sqrt(2 n_layer)
           of the others' std, and training moves them apart), so one global threshold would
           strip the small-scale layers first and at 75 % can empty a projection outright,
           while per layer every matrix keeps a quarter of its largest weights.
2:4        Semi-structured (the pattern sparse tensor cores run at 2x): in every group of 4
           consecutive input weights of an output channel, the 2 of smallest |w| are zeroed,
           so sparsity is exactly 50 %. Inputs are axis 1 of an (out, in) weight and axis 0 of
           GPT-2's (in, out) Conv1D layout. A layer whose inputs are not a multiple of 4 is
           refused, naming it.

Masks are fixed once chosen. The recovery fine-tune (the Trainer on the built-in corpus or
--data, from the pruned weights) re-applies them after every optimizer step, w <- w * mask,
so a pruned weight is exactly 0 at every step and in every checkpoint, whatever AdamW's
moments or weight decay would do; the masks are saved beside each checkpoint
(masks.safetensors, uint8) and read back to continue. DIR is a run directory: step 0 holds
the pruned model, a recovery's checkpoints follow; pruning.json in each says the method, the
sparsity per layer and the validation perplexity before pruning, after it and after recovery
(DIR/pruning.json: the final one).
"""
import math
import os

import numpy as np

from ..errors import ConfigError
from ..nn.layers import Linear

METHODS = ("magnitude", "2:4")
# The recovery's default peak learning rate: a tenth of the demo preset's. Fine-tuning a trained
# model at its pre-training peak with fresh AdamW moments undoes more than pruning did
# (benchmarks/results/compress.md: at 6e-3, 25 % magnitude went from perplexity 12.26 to 14.81).
RECOVERY_LR = 6e-4
MASKS_FILE = "masks.safetensors"
REPORT_FILE = "pruning.json"


def prunable_linears(model):
    """{dotted weight name: Linear} of the blocks' Linear layers (not the LM head)."""
    found = {}
    for prefix, module in model.named_modules():
        for attr, child in vars(module).items():
            if type(child) is Linear and prefix + attr != "lm_head":
                found[f"{prefix}{attr}.weight"] = child
    return found


def magnitude_mask(weight, sparsity):
    """bool mask keeping all but the round(sparsity * size) smallest |w| (ties: lower index first)."""
    flat = np.abs(weight).reshape(-1)
    drop = int(round(sparsity * flat.size))
    keep = np.ones(flat.size, dtype=bool)
    keep[np.argsort(flat, kind="stable")[:drop]] = False
    return keep.reshape(weight.shape)


def two_four_mask(weight, in_axis, name="weight"):
    """bool mask keeping the 2 largest |w| of every 4 consecutive inputs (ties: lower index)."""
    if weight.shape[in_axis] % 4:
        raise ConfigError(f"2:4 pruning needs inputs in groups of 4; {name} has "
                          f"{weight.shape[in_axis]} inputs; use --method magnitude")
    w = np.moveaxis(np.abs(weight), in_axis, -1)
    groups = w.reshape(*w.shape[:-1], -1, 4)
    order = np.argsort(groups, axis=-1, kind="stable")       # ascending: the first two go
    keep = np.ones(groups.shape, dtype=bool)
    np.put_along_axis(keep, order[..., :2], False, axis=-1)
    return np.moveaxis(keep.reshape(w.shape), -1, in_axis)


def prune_model(model, method, sparsity=0.5):
    """Zero the chosen weights in place; returns {weight name: bool mask}."""
    if method not in METHODS:
        raise ConfigError(f"unknown pruning method {method!r}; choose one of {METHODS}")
    if method == "magnitude" and not 0.0 <= sparsity < 1.0:
        raise ConfigError(f"--sparsity must be in [0, 1), got {sparsity}")
    if method == "2:4" and sparsity != 0.5:
        raise ConfigError(f"2:4 pruning is 50 % sparse by construction; leave out --sparsity {sparsity}")
    linears = prunable_linears(model)
    weights = {name: linear.weight.numpy() for name, linear in linears.items()}
    masks = {}                       # every mask is computed before any weight changes
    for name, linear in linears.items():
        w = weights[name]
        masks[name] = (magnitude_mask(w, sparsity) if method == "magnitude"
                       else two_four_mask(w, 0 if linear.weight_layout == "in_out" else 1, name))
    apply_masks(model, masks)
    return masks


def apply_masks(model, masks):
    """w <- w * mask for every masked weight, in place (after each recovery step)."""
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        p = params[name]
        host = p.numpy()
        if host.shape != mask.shape:
            raise ConfigError(f"mask of {name} is {mask.shape}, the weight {host.shape}")
        p.data = p.backend.asarray(np.where(mask, host, 0).astype(host.dtype), host.dtype)


def sparsity_report(masks):
    """{name: zero fraction} and the overall fraction over all masked weights."""
    per_layer = {name: float(1.0 - m.mean()) for name, m in masks.items()}
    total = sum(m.size for m in masks.values())
    overall = float(sum((~m).sum() for m in masks.values()) / total) if total else 0.0
    return per_layer, overall


def save_masks(path, masks):
    from ..train.checkpoint import save_tensors
    save_tensors(path, {name: m.astype(np.uint8) for name, m in masks.items()})


def load_masks(path):
    from ..train.checkpoint import load_tensors
    return {name: np.asarray(m).astype(bool) for name, m in load_tensors(path).items()}


def _trainer_class():
    from ..fileio import write_json
    from ..train.trainer import Trainer

    class PruneTrainer(Trainer):
        """The Trainer whose masked weights stay zero: masks re-applied after every step."""
        masks, report = {}, {}

        def train_step(self):
            record = super().train_step()
            apply_masks(self.model, self.masks)
            return record

        def checkpoint_files(self):
            return {MASKS_FILE: lambda p: save_masks(p, self.masks),
                    REPORT_FILE: lambda p: write_json(p, self.report)}

    return PruneTrainer


def prune(run, method, sparsity, out_dir, recover_steps=0, overrides=None, log=print):
    """Prune RUN into the run directory out_dir (recovering for recover_steps); returns the report."""
    from ..fileio import write_json
    from ..train import checkpoint as ckpt
    from ..train.config import make_config
    from ..train.trainer import _check_fresh_run_dir
    _check_fresh_run_dir(out_dir)
    model, tokenizer, generation = ckpt.load_model(run)
    if getattr(model, "quantization", None):
        raise ConfigError(f"{run} is quantized; prune the full-precision model, then quantize")
    dense = {k: v.copy() for k, v in model.state_dict().items()}
    masks = prune_model(model, method, sparsity)
    per_layer, overall = sparsity_report(masks)
    report = {"source": run, "method": method, "sparsity": overall, "per_layer": per_layer,
              "recover_steps": recover_steps}
    checkpoint = ckpt.Checkpoint(0, model.config.to_dict(), model.state_dict(), tokenizer, generation, None,
                                 None, {MASKS_FILE: lambda p: save_masks(p, masks)})
    ckpt.save(out_dir, checkpoint)
    # The trainer (from the pruned step 0) measures perplexity and runs the recovery.
    config = make_config(None, None, {"progress": False, "num_samples": 0, "lr": RECOVERY_LR,
                                      "min_lr": RECOVERY_LR / 10, **(overrides or {}),
                                      "init_from": out_dir, "out_dir": out_dir,
                                      "max_steps": max(recover_steps, 1)})
    trainer = _trainer_class()(config, log).setup()
    trainer.masks = masks
    pruned_loss = trainer.evaluate()["val_loss"]
    trainer.model.load_state_dict(dense)
    dense_loss = trainer.evaluate()["val_loss"]
    apply_masks(trainer.model, masks)
    report.update(dense_val_loss=dense_loss, dense_perplexity=math.exp(dense_loss),
                  pruned_val_loss=pruned_loss, pruned_perplexity=math.exp(pruned_loss))
    trainer.report = report
    log(f"pruned {len(masks)} Linear layers ({method}): {overall:.1%} of their weights are 0; val "
        f"perplexity {report['dense_perplexity']:.2f} -> {report['pruned_perplexity']:.2f}")
    if recover_steps:
        if os.path.exists(trainer.metrics_path):
            os.remove(trainer.metrics_path)
        summary = trainer.run()
        report.update(recovered_val_loss=summary["val_loss"],
                      recovered_perplexity=math.exp(summary["val_loss"]))
        log(f"after {recover_steps} recovery steps: val perplexity {report['recovered_perplexity']:.2f}")
    report["sparsity_after"] = sparsity_report(
        {n: trainer.model.state_dict()[n] != 0 for n in masks})[1]
    write_json(os.path.join(out_dir, REPORT_FILE), report)
    return report


def run_prune(args):
    """`microgpt prune`: the flags given become the recovery run's config."""
    overrides = {k: getattr(args, k) for k in ("data", "data_dir", "lr", "batch_size", "eval_batches")
                 if getattr(args, k) is not None}
    report = prune(args.run_dir, args.method, args.sparsity, args.out, args.recover_steps, overrides)
    line = (f"{args.method}: {report['sparsity']:.1%} zeros; val perplexity dense "
            f"{report['dense_perplexity']:.2f}, pruned {report['pruned_perplexity']:.2f}")
    if "recovered_perplexity" in report:
        line += f", after {args.recover_steps} steps {report['recovered_perplexity']:.2f}"
    print(f"{line}\nwrote {args.out}")
    return 0
