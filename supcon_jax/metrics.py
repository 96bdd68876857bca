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
from collections.abc import Mapping
from typing import Any

import flax
import jax
import numpy as np
from clu import metrics
from etils import epath

from supcon_jax import fileio, tf_setup


@flax.struct.dataclass
class TrainMetrics(metrics.Collection):
  """Per-step loss, gradient norm and skipped-step fraction, averaged on the device."""
  loss: metrics.Average.from_output("loss")
  grad_norm: metrics.Average.from_output("grad_norm")
  nonfinite: metrics.Average.from_output("nonfinite")  # fraction of steps skipped


class Writer:
  """One stage's scalars: `<directory>/metrics.jsonl`, the log, and TensorBoard events in
  `<directory>/tensorboard` (when TensorFlow is installed). Process 0 writes; others skip.

  Nothing is opened before `resume_at` or the first `write`, so a run refused at start-up
  leaves the directory as it was.
  """

  def __init__(self, directory: str, *, tensorboard: bool = True):
    self._lead = jax.process_index() == 0
    self._dir = epath.Path(directory)  # local or gs://
    self._want_tb = tensorboard
    self._jsonl = None
    self._tb = None

  def resume_at(self, step: int) -> None:
    """Makes the files hold exactly the rows of steps <= `step` (the restored checkpoint).

    A run killed after its last checkpoint logged rows the resumed run logs again, and may
    have left half a line: both go, and TensorBoard's events are rewritten from the rows
    kept, so the two never disagree.
    """
    if not self._lead:
      return
    self.close()
    path = self._dir / "metrics.jsonl"
    rows = [r for r in read_rows(path) if r["step"] <= step] if path.exists() else []
    fileio.write_atomic(str(path), "".join(json.dumps(r) + "\n" for r in rows))
    self._open(rewrite_events=True)
    for row in rows:
      self._write_events(row)

  def write(self, step: int, scalars: Mapping[str, Any]) -> None:
    """One row of scalars at `step` (process 0 only)."""
    if not self._lead:
      return
    if self._jsonl is None:
      self._open(rewrite_events=False)
    row = {"step": int(step), **{k: float(np.asarray(v)) for k, v in scalars.items()}}
    self._jsonl.write(json.dumps(row) + "\n")
    self._jsonl.flush()
    self._write_events(row)

  def _open(self, rewrite_events: bool) -> None:
    self._dir.mkdir(parents=True, exist_ok=True)
    self._jsonl = (self._dir / "metrics.jsonl").open("a")
    if not self._want_tb:
      return
    try:
      tf_setup.tensorflow()  # started as the input pipelines start it, before clu imports it
      from clu import metric_writers
    except ImportError:
      logging.info("TensorFlow is not installed: no TensorBoard events, metrics.jsonl only")
      return
    events = self._dir / "tensorboard"
    if rewrite_events and events.exists():
      for old in events.glob("events.out.tfevents.*"):
        old.unlink()
    self._tb = metric_writers.SummaryWriter(os.fspath(events))

  def _write_events(self, row: dict[str, Any]) -> None:
    if self._tb is not None:
      self._tb.write_scalars(row["step"], {k: v for k, v in row.items() if k != "step"})

  def __enter__(self) -> "Writer":
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def close(self) -> None:
    """Flushes and closes every output."""
    if self._jsonl is not None:
      self._jsonl.close()
      self._jsonl = None
    if self._tb is not None:
      self._tb.flush()
      self._tb.close()
      self._tb = None


def read_rows(path: epath.Path) -> list[dict[str, Any]]:
  """The complete rows of a metrics.jsonl; a half-written last line is dropped."""
  rows = []
  for line in path.read_text().splitlines():
    try:
      rows.append(json.loads(line))
    except json.JSONDecodeError:
      logging.warning("dropped a partial line of %s (a killed run was writing it)", path)
  return rows
