"""Optimisers and the learning-rate schedule, built from a config's `optim` block.

The paper (Khosla et al. 2020, Sec. 4 and App.) pre-trains with LARS, a learning rate
scaled linearly with the batch (base_lr * batch / 256), linear warm-up and cosine decay;
the linear classifier on the frozen representation is trained with SGD or RMSProp.

BatchNorm scales/biases and every bias are excluded from weight decay and from the LARS
trust ratio, as the reference TPU implementations (SimCLR, big_vision) do: the trust ratio
||w|| / ||g|| of a 1-D parameter (a BN bias starts at 0, a BN scale at 1) swings wildly and
destabilises training, and decaying a BN scale only fights the normalisation, shrinking
the layer's output without regularising anything. `decay_mask` is the one place that
decides which leaves count as weights.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import optax

from supcon_jax.checks import one_of

_REFERENCE_BATCH = 256  # the batch the base learning rate refers to (Goyal et al. 2017)


def _check(ok: bool, message: str) -> None:
  if not ok:
    raise ValueError(message)


def check_config(optim_config: Any, name: str = "optim") -> None:
  """ValueError naming the field (`name`.field) of the first bad value of an `optim` block."""
  c = optim_config
  one_of(f"{name}.name", c.name, OPTIMIZERS)
  _check(c.base_lr > 0, f"{name}.base_lr must be > 0, got {c.base_lr}")
  _check(c.warmup_epochs >= 0, f"{name}.warmup_epochs must be >= 0, got {c.warmup_epochs}")
  _check(c.weight_decay >= 0, f"{name}.weight_decay must be >= 0, got {c.weight_decay}")
  _check(0 <= c.momentum < 1, f"{name}.momentum must be in [0, 1), got {c.momentum}")
  _check(c.trust_coefficient > 0,
         f"{name}.trust_coefficient must be > 0, got {c.trust_coefficient}")
  _check(0 <= c.max_warmup_fraction <= 1,
         f"{name}.max_warmup_fraction must be in [0, 1], got {c.max_warmup_fraction}")


def schedule_plan(optim_config: Any, *, batch_size: int, steps_per_epoch: int,
                  total_steps: int) -> dict[str, Any]:
  """The learning-rate schedule of a run as numbers: total_steps, warmup_steps, peak_lr.

  The warm-up is `warmup_epochs`, but at most `max_warmup_fraction` of the run: a run cut
  short (by a time budget, or a short test of a long recipe) still reaches its peak early
  and decays to zero at its end.
  """
  c = optim_config
  check_config(c)
  _check(batch_size > 0, f"batch_size must be > 0, got {batch_size}")
  _check(steps_per_epoch > 0, f"steps_per_epoch must be > 0, got {steps_per_epoch}")
  _check(total_steps > 0, f"total_steps must be > 0, got {total_steps}")
  asked = int(round(c.warmup_epochs * steps_per_epoch))
  return {"total_steps": total_steps, "peak_lr": c.base_lr * batch_size / _REFERENCE_BATCH,
          "warmup_steps": min(asked, int(c.max_warmup_fraction * total_steps)),
          "warmup_capped": asked > int(c.max_warmup_fraction * total_steps)}


def lr_schedule(optim_config: Any, *, batch_size: int, steps_per_epoch: int,
                total_steps: int) -> optax.Schedule:
  """base_lr * batch_size / 256, linear warm-up from 0, then cosine decay to 0 at total_steps.

  The warm-up is capped as `schedule_plan` says; a warm-up of 0 starts at the peak.
  """
  plan = schedule_plan(optim_config, batch_size=batch_size, steps_per_epoch=steps_per_epoch,
                       total_steps=total_steps)
  peak, warmup_steps = plan["peak_lr"], plan["warmup_steps"]
  cosine = lambda steps: optax.cosine_decay_schedule(peak, steps)
  if warmup_steps == 0:
    return cosine(total_steps)
  warmup = optax.linear_schedule(0.0, peak, warmup_steps)
  if warmup_steps == total_steps:  # max_warmup_fraction = 1
    return warmup
  return optax.join_schedules([warmup, cosine(total_steps - warmup_steps)], [warmup_steps])


def decay_mask(params: Any) -> Any:
  """True for conv/dense kernels (leaf named `kernel`, ndim > 1); False for BN and biases."""

  def is_weight(path, leaf) -> bool:
    last = path[-1] if path else None
    name = getattr(last, "key", getattr(last, "name", None))
    return name == "kernel" and np.ndim(leaf) > 1

  return jax.tree_util.tree_map_with_path(is_weight, params)


def _lars(c, lr: optax.Schedule) -> optax.GradientTransformation:
  return optax.lars(lr, weight_decay=c.weight_decay, weight_decay_mask=decay_mask,
                    trust_coefficient=c.trust_coefficient, trust_ratio_mask=decay_mask,
                    momentum=c.momentum, nesterov=c.nesterov)


def _sgd(c, lr: optax.Schedule) -> optax.GradientTransformation:
  # L2 added to the gradient before the momentum buffer, as torch.optim.SGD does.
  return optax.chain(optax.add_decayed_weights(c.weight_decay, mask=decay_mask),
                     optax.sgd(lr, momentum=c.momentum or None, nesterov=c.nesterov))


def _rmsprop(c, lr: optax.Schedule) -> optax.GradientTransformation:
  return optax.chain(optax.add_decayed_weights(c.weight_decay, mask=decay_mask),
                     optax.rmsprop(lr, momentum=c.momentum or None, nesterov=c.nesterov))


def _adamw(c, lr: optax.Schedule) -> optax.GradientTransformation:
  return optax.adamw(lr, weight_decay=c.weight_decay, mask=decay_mask)


_BUILDERS: dict[str, Callable[[Any, optax.Schedule], optax.GradientTransformation]] = {
    "lars": _lars, "sgd": _sgd, "rmsprop": _rmsprop, "adamw": _adamw}
OPTIMIZERS = tuple(_BUILDERS)


def make_optimizer(optim_config: Any, *, batch_size: int, steps_per_epoch: int,
                   total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """The optimiser named by optim_config.name, driven by `lr_schedule`, and that schedule."""
  c = optim_config
  schedule = lr_schedule(c, batch_size=batch_size, steps_per_epoch=steps_per_epoch,
                         total_steps=total_steps)
  return _BUILDERS[c.name](c, schedule), schedule
