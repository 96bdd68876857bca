"""Metric collections for the steps, and the writers that record them.

Every logged step goes to `<workdir>/metrics.jsonl` (one JSON object a line) and to the
log; TensorBoard event files are added through clu's `SummaryWriter` when TensorFlow is
installed. clu's writer package imports TensorFlow as it loads, so it is imported only
here, lazily, after hiding the accelerators from TensorFlow.
"""

# No `from __future__ import annotations`: clu reads the metric classes from __annotations__.

import json
import logging
import os
from typing import Any, Mapping

import flax
from etils import epath
import jax
import numpy as np
from clu import metrics


@flax.struct.dataclass
class TrainMetrics(metrics.Collection):
  """Per-step loss, gradient norm and skipped-step fraction, averaged on the device."""
  loss: metrics.Average.from_output("loss")
  grad_norm: metrics.Average.from_output("grad_norm")
  nonfinite: metrics.Average.from_output("nonfinite")  # fraction of steps skipped


class Writer:
  """Scalars to metrics.jsonl, the log, and TensorBoard (if TensorFlow is available)."""

  def __init__(self, workdir: str, *, tensorboard: bool = True):
    self._lead = jax.process_index() == 0
    self._jsonl = None
    self._tb = None
    if not self._lead:
      return
    path = epath.Path(workdir)  # local or gs://
    path.mkdir(parents=True, exist_ok=True)
    self._jsonl = (path / "metrics.jsonl").open("a")
    if tensorboard:
      try:
        # tfdata imports TensorFlow with the GPUs/TPUs hidden from it, before clu does.
        from supcon_jax.data import tfdata  # pylint: disable=g-import-not-at-top,unused-import
        from clu import metric_writers  # pylint: disable=g-import-not-at-top
        self._tb = metric_writers.SummaryWriter(os.path.join(workdir, "tensorboard"))
      except ImportError:
        logging.info("TensorFlow is not installed: no TensorBoard events, metrics.jsonl only")

  def write(self, step: int, scalars: Mapping[str, Any]) -> None:
    """One row of scalars at `step` (process 0 only)."""
    if not self._lead:
      return
    values = {k: float(np.asarray(v)) for k, v in scalars.items()}
    self._jsonl.write(json.dumps({"step": int(step), **values}) + "\n")
    self._jsonl.flush()
    if self._tb is not None:
      self._tb.write_scalars(int(step), values)

  def __enter__(self) -> "Writer":
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def close(self) -> None:
    """Flushes and closes every output."""
    if self._jsonl is not None:
      self._jsonl.close()
    if self._tb is not None:
      self._tb.flush()
      self._tb.close()
