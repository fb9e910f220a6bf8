"""The learning-rate schedule: linear warmup, then cosine decay to a floor.

    step < warmup:            lr = max_lr * (step + 1) / warmup
    warmup <= step <= decay:  r = (step - warmup) / (decay - warmup)
                              lr = min_lr + (max_lr - min_lr) * 0.5 * (1 + cos(pi * r))
    step > decay:             lr = min_lr

Steps count from 0, so the first update already uses a non-zero rate (max_lr / warmup)
and the peak is reached at the last warmup step. `decay_steps` is normally the run's
max_steps, so the rate reaches min_lr exactly at the end. A pure function of the step:
a resumed run needs no schedule state.
"""
import math

from ..errors import ConfigError


def lr_at(step, max_lr, min_lr, warmup_steps, decay_steps):
    """The learning rate of optimizer step `step` (0-based)."""
    if step < 0:
        raise ConfigError(f"step must be >= 0, got {step}")
    if warmup_steps < 0 or decay_steps < warmup_steps:
        raise ConfigError(f"need 0 <= warmup_steps ({warmup_steps}) <= decay_steps ({decay_steps})")
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    if step > decay_steps or decay_steps == warmup_steps:
        return min_lr
    ratio = (step - warmup_steps) / (decay_steps - warmup_steps)
    return min_lr + (max_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * ratio))
