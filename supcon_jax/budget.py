"""Fitting pre-training into a wall-time budget (`config.time_budget_s`).

A recipe such as "CIFAR-10 in ten minutes" cannot know its epochs in advance: they depend on
the accelerator. With a budget, the trainer compiles the step, times a few steps on a
throw-away copy of the state, and cuts `config.epochs` to what fits in the time left (less a
reserve for the linear stage and evaluation). The decision is written to
`<workdir>/budget.json` before training starts, so a resumed run keeps the same schedule.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np
from etils import epath
from jax.experimental import multihost_utils

from supcon_jax import fileio


def measure_step_seconds(step_fn: Callable, state: Any, batches: Iterator[dict], rng: jax.Array,
                         *, warmup: int = 3, steps: int = 10) -> tuple[float, float]:
  """(compile + warm-up seconds, seconds per step) of `step_fn`, on a copy of `state`."""
  probe = jax.tree.map(lambda x: x.copy(), state)  # the step donates its state
  start = time.time()
  for _ in range(warmup):
    probe, m = step_fn(probe, next(batches), rng)
  jax.block_until_ready(m)
  compiled = time.time()
  for _ in range(steps):
    probe, m = step_fn(probe, next(batches), rng)
  jax.block_until_ready(m)
  return compiled - start, (time.time() - compiled) / steps


def epochs_that_fit(*, max_epochs: float, seconds_left: float, step_seconds: float,
                    steps_per_epoch: int) -> float:
  """Whole epochs of `step_seconds` steps that fit in `seconds_left` (at most max_epochs)."""
  fit = math.floor(seconds_left / (step_seconds * steps_per_epoch))
  if fit < 1:
    raise ValueError(f"config.time_budget_s leaves {seconds_left:.0f} s for pre-training, less "
                     f"than one epoch ({step_seconds * steps_per_epoch:.0f} s); raise the budget")
  return float(min(max_epochs, fit))


def plan_epochs(config: Any, workdir: str, *, started: float,
                probe: Callable[[], tuple[float, float]], steps_per_epoch: int) -> float:
  """The pre-training epochs for this workdir: decided once, then read back on resume."""
  record = epath.Path(workdir) / "budget.json"
  if record.exists():
    return float(json.loads(record.read_text())["epochs"])
  compile_s, step_s = probe()
  # A shorter schedule compiles a second step; the reserve covers the linear stage and evals.
  left = config.time_budget_s - (time.time() - started) - compile_s - config.time_reserve_s
  # Hosts time their steps differently; all must decide alike, from host 0's timings (and
  # fail alike, rather than one host raising while the others wait).
  compile_s, step_s, left = (float(v) for v in multihost_utils.broadcast_one_to_all(
      np.array([compile_s, step_s, left], np.float64)))
  epochs = epochs_that_fit(max_epochs=config.epochs, seconds_left=left, step_seconds=step_s,
                           steps_per_epoch=steps_per_epoch)
  info = {"epochs": epochs, "step_seconds": step_s, "compile_seconds": compile_s,
          "seconds_left_for_pretraining": left, "budget_s": config.time_budget_s}
  logging.info("time budget: %s", info)
  if jax.process_index() == 0:
    fileio.write_json(str(record), info)
  return epochs
