"""Training: the state, one jitted step, and the loop that logs, checkpoints and resumes.

The same loop drives every stage: training an encoder with any method (the loss comes from
`methods.py`) and the linear classifier of `evaluate.py`; what differs is the loss function
handed to `make_step`.

Everything a resumed run needs is in the checkpoint: the step is also the data position
(sources replay their stream from any step) and the RNG position (step k's key is drawn at k
from the stage's stream, rngs.py), so a restart continues the same run exactly.
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from supcon_jax import checkpoint, metrics, rngs, sharding

# (params, carried, batch, rng, *frozen) -> (loss, new carried). `carried` is what the loss
# keeps from step to step without gradients: the BatchNorm statistics, or (batch_stats,
# momentum) for a momentum encoder (`MomentumTrainState`).
LossFn = Callable[..., tuple[jax.Array, Any]]


@flax.struct.dataclass
class TrainState:
  """Everything a resumed run needs: the step is also the data and RNG position."""
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  nonfinite_steps: jax.Array  # steps whose loss or gradient was not finite (update dropped)
  first_nonfinite: jax.Array  # the first such step, -1 while there is none


@flax.struct.dataclass
class MomentumTrainState(TrainState):
  """A TrainState with a momentum encoder: its variables and the queue of past keys.

  A subclass, not an optional field, so checkpoints of runs without one keep their layout.
  """
  momentum: Any


def _carried(state: TrainState) -> Any:
  if isinstance(state, MomentumTrainState):
    return state.batch_stats, state.momentum
  return state.batch_stats


def _with_carried(state: TrainState, carried: Any) -> dict[str, Any]:
  if isinstance(state, MomentumTrainState):
    return {"batch_stats": carried[0], "momentum": carried[1]}
  return {"batch_stats": carried}


class NonFiniteError(FloatingPointError):
  """A step's loss or gradient was not finite and the config does not skip such steps."""


class Preempted(Exception):
  """SIGTERM or Ctrl-C (SIGINT) arrived; a checkpoint was written and the run can be
  restarted. `signal` names the signal."""

  def __init__(self, message: str, signal_name: str = "SIGTERM"):
    super().__init__(message)
    self.signal = signal_name


def new_state(params: Any, batch_stats: Any, optimizer: optax.GradientTransformation,
              momentum: Any = None) -> TrainState:
  """A fresh state, not yet placed on devices (a MomentumTrainState with `momentum`);
  traceable, so `jax.eval_shape` gives its shapes without building it."""
  fields = dict(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                opt_state=optimizer.init(params), nonfinite_steps=jnp.zeros((), jnp.int32),
                first_nonfinite=jnp.full((), -1, jnp.int32))
  return (TrainState(**fields) if momentum is None
          else MomentumTrainState(**fields, momentum=momentum))


def create_state(params: Any, batch_stats: Any, optimizer: optax.GradientTransformation,
                 mesh: jax.sharding.Mesh, momentum: Any = None) -> TrainState:
  """A fresh state, replicated over the mesh (a MomentumTrainState with `momentum`)."""
  return sharding.replicate(new_state(params, batch_stats, optimizer, momentum), mesh)


def init_model(model: flax.linen.Module, seed: int, image_shape: tuple[int, ...],
               mesh: jax.sharding.Mesh) -> tuple[Any, Any]:
  """(params, batch_stats) of `model`, initialised directly on the mesh's devices."""
  dummy = jnp.zeros((1,) + tuple(image_shape), jnp.float32)
  # The "rbg" generator compiles several times faster than threefry for a ResNet's many
  # initialisers; init runs replicated, so its values do not depend on the mesh.
  rng = rngs.stream(seed, "init", impl="rbg")
  variables = jax.jit(lambda r: model.init(r, dummy, train=False),
                      out_shardings=sharding.replicated(mesh))(rng)
  return variables["params"], variables.get("batch_stats", {})


def make_step(loss_fn: LossFn, optimizer: optax.GradientTransformation, mesh: jax.sharding.Mesh,
              *, donate: bool = True) -> Callable[..., tuple[TrainState, metrics.TrainMetrics]]:
  """Compiles `train_step(state, batch, rng, *frozen) -> (state, metrics)`.

  `loss_fn(params, carried, batch, rng, *frozen) -> (loss, new carried)` (see `LossFn`). The
  step key is `rngs.draw(rng, state.step)`, `rng` being the stage's stream. An update with
  a non-finite loss, gradient or result is dropped (the state keeps its values) and counted;
  the loop decides whether to stop.
  """

  def train_step(state: TrainState, batch: dict[str, jax.Array], rng: jax.Array, *frozen):
    rng = rngs.draw(rng, state.step)
    (loss, carried), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params, _carried(state), batch, rng, *frozen)
    grad_norm = optax.tree.norm(grads)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    # The new parameters too: a huge but finite update can still overflow them.
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & jax.tree.reduce(
        jnp.logical_and, jax.tree.map(lambda p: jnp.isfinite(p).all(), params))
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
    state = state.replace(
        step=state.step + 1,
        params=keep(params, state.params),
        **_with_carried(state, keep(carried, _carried(state))),
        opt_state=keep(opt_state, state.opt_state),
        nonfinite_steps=state.nonfinite_steps + (~finite).astype(jnp.int32),
        first_nonfinite=jnp.where((state.first_nonfinite < 0) & ~finite, state.step,
                                  state.first_nonfinite))
    m = metrics.TrainMetrics.single_from_model_output(
        loss=loss, grad_norm=grad_norm, nonfinite=(~finite).astype(jnp.float32))
    return state, m

  replicated = sharding.replicated(mesh)
  return jax.jit(train_step, donate_argnums=(0,) if donate else (),
                 out_shardings=(replicated, replicated))


class PreemptionWatch:
  """Turns SIGTERM and a first Ctrl-C (SIGINT) into a flag the loop checks between steps (no
  host sync); a second Ctrl-C gets the previous handler back (Python's: KeyboardInterrupt at
  once).

  With several processes, JAX's preemption service (started by jax.distributed.initialize)
  owns SIGTERM and agrees on one step for all hosts; a Python handler would replace its own,
  and a Ctrl-C stopping one process alone would leave the others waiting: there, nothing is
  installed.
  """

  def __init__(self):
    self.requested: str | None = None  # the signal's name, once one arrived
    self._previous: dict[int, Any] = {}

  def __enter__(self):
    if jax.process_count() > 1:
      return self
    try:
      for signum in (signal.SIGTERM, signal.SIGINT):
        self._previous[signum] = signal.signal(signum, self._on_signal)
    except ValueError:  # not the main thread (e.g. some notebook kernels): no handler
      self._previous = {}
    return self

  def _on_signal(self, signum, frame):
    del frame
    name = signal.Signals(signum).name
    if signum == signal.SIGINT:  # the next Ctrl-C interrupts at once
      signal.signal(signal.SIGINT, self._previous[signal.SIGINT])
    # A Ctrl-C at a terminal gets one line, when the checkpoint is saved (Preempted's);
    # a scheduler's SIGTERM is also logged as it arrives.
    logging.warning("%s: checkpointing at the end of this step, then exiting", name,
                    extra={"console": signum != signal.SIGINT})
    self.requested = self.requested or name

  def __exit__(self, *exc):
    for signum, previous in self._previous.items():
      signal.signal(signum, previous)

  def should_stop(self, step: int) -> bool:
    """Whether to checkpoint and stop after `step` (all processes agree)."""
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      return multihost_utils.reached_preemption_sync_point(step)
    return self.requested is not None


# An epoch that waits longer than this for its batches gets a warning (once per stage).
INPUT_WAIT_WARNING = 0.10


class StepProfile:
  """A `jax.profiler` trace of steps `first`..`last` (numbered as the log numbers them) into
  `directory`, on host 0: TensorBoard's profile plugin reads it (--logdir=directory), and
  Perfetto its perfetto_trace.json.gz."""

  def __init__(self, steps: tuple[int, int], directory: str):
    self.first, self.last = steps
    self.directory = directory
    self._tracing = False

  def before(self, step: int) -> None:
    """Starts the trace if step `step` (1-based) is the first one to trace."""
    if self.first <= step <= self.last and not self._tracing and jax.process_index() == 0:
      # Without the Python tracer: a step that compiles makes millions of Python calls, which
      # would fill the trace's event buffer (the steps after them then go missing) and slow
      # the host it is meant to measure. JAX's and tf.data's own annotations stay.
      options = jax.profiler.ProfileOptions()
      options.python_tracer_level = 0
      jax.profiler.start_trace(self.directory, create_perfetto_trace=True,
                               profiler_options=options)
      self._tracing = True

  def after(self, step: int, outputs: Any) -> None:
    """Stops the trace once step `step`'s `outputs` are computed, if it is the last one."""
    if self._tracing and step >= self.last:
      jax.block_until_ready(outputs)
      jax.profiler.stop_trace()
      self._tracing = False
      logging.info("profile of steps %d..%d written to %s", self.first, self.last,
                   self.directory)


@dataclasses.dataclass
class LoopSettings:
  """How `fit` runs one stage: its length, where it logs and checkpoints, what it reports."""
  name: str
  num_steps: int
  steps_per_epoch: int
  images_per_step: int  # what the progress line's rate counts (views, or cached features)
  ckpt: checkpoint.Checkpointer
  writer: metrics.Writer
  log_every: int
  skip_nonfinite: bool
  schedule: Callable[[int], Any] | None = None
  every_epoch: Callable[[int, TrainState], dict[str, float]] | None = None  # e.g. kNN monitor
  started: float = dataclasses.field(default_factory=time.time)  # for elapsed_s in the metrics
  # The console shows a progress line at most this often, and the first, the last and those
  # with an evaluation; log.txt and metrics.jsonl get every one (console.py).
  console_every_s: float = 10.0
  profile: StepProfile | None = None
  # What fit measured of the steps it ran (not counting the first, which compiles): their
  # seconds, and those spent waiting for the input pipeline to hand over the next batch.
  timed_s: float = 0.0
  input_wait_s: float = 0.0

  @property
  def input_wait_fraction(self) -> float:
    """The share of the timed steps' wall time spent waiting for batches."""
    return self.input_wait_s / self.timed_s if self.timed_s > 0 else 0.0


def resume(state: TrainState, ckpt: checkpoint.Checkpointer, *, to_continue: bool = True
           ) -> TrainState:
  """The newest checkpoint of `ckpt`, else `state` unchanged (see `restore_latest`)."""
  restored = ckpt.restore_latest(checkpoint.abstract(state), to_continue=to_continue)
  return state if restored is None else restored[1]


def fit(loop: LoopSettings, state: TrainState, step_fn: Callable,
        batches: Callable[[int], Iterator], rng: jax.Array, *frozen) -> TrainState:
  """Runs `step_fn` from the state's step to `loop.num_steps`, then saves a final checkpoint."""
  start = int(state.step)
  loop.writer.resume_at(start)  # rows a killed run logged past its last checkpoint go
  if start >= loop.num_steps:
    return state
  # Past the start-up checks: from here on the run keeps its log.txt (console.py).
  logging.info("[%s] steps %d..%d (%d per epoch)", loop.name, start, loop.num_steps,
               loop.steps_per_epoch, extra={"underway": True})
  stream = batches(start)
  pending = None  # metrics not yet logged
  # The rate and the ETA are measured from the end of the first step, which compiles,
  # unless that step is logged itself (then it is all there is to measure).
  last_log, last_time = start, time.time()
  paced_from = (last_log, last_time)  # the (step, time) the ETA's pace is measured from
  shown = -float("inf")  # when the console last showed a progress line
  previous = None  # the metrics of the step before this one
  # Seconds spent in next(batches) since the last log, and since the epoch began. With at
  # most one step in flight, the device idles for at most this long (the PyTorch
  # reference's "data time"); a pipeline that keeps up hands over a prefetched batch at once.
  waited = epoch_waited = 0.0
  epoch_from, warned = time.time(), False
  with PreemptionWatch() as watch:
    for step in range(start, loop.num_steps):
      done = step + 1
      if loop.profile:
        loop.profile.before(done)
      with jax.profiler.StepTraceAnnotation(loop.name, step_num=done):
        asked = time.time()
        batch = next(stream)
        got = time.time() - asked
        waited, epoch_waited = waited + got, epoch_waited + got
        state, m = step_fn(state, batch, rng, *frozen)
      if previous is not None:
        # At most this step in flight: the device stays busy with it while the host prepares
        # the next, and a signal is answered within a step, not after a queue of them.
        jax.block_until_ready(previous)
      previous = m
      if loop.profile:
        loop.profile.after(done, m)
      pending = m if pending is None else pending.merge(m)
      stop = watch.should_stop(done)
      epoch_end = done % loop.steps_per_epoch == 0
      if (done % loop.log_every == 0 or done == loop.num_steps or stop or epoch_end
          or loop.ckpt.due(done)):
        values = {k: float(v) for k, v in pending.compute().items()}  # waits for the steps
        now = time.time()
        rate = loop.images_per_step * (done - last_log) / max(now - last_time, 1e-9)
        values.update(images_per_sec=rate, elapsed_s=now - loop.started,
                      lr=float(loop.schedule(done - 1)) if loop.schedule else 0.0,
                      input_wait_fraction=min(1.0, waited / max(now - last_time, 1e-9)))
        if step > start:  # the first step's time is mostly compiling
          loop.timed_s += now - last_time
          loop.input_wait_s += waited
        else:
          epoch_from, epoch_waited = now, 0.0
        values["nonfinite_steps"] = _check_finite(loop, state)
        if epoch_end:
          # Cached features (no "image") come from device memory in microseconds: a share of
          # such a step's time says nothing of an input pipeline.
          if "image" in batch:
            warned = _warn_input_wait(loop, done, epoch_waited / max(now - epoch_from, 1e-9),
                                      warned)
          epoch_waited, epoch_from = 0.0, now
        if epoch_end and loop.every_epoch is not None:
          values.update(loop.every_epoch(done // loop.steps_per_epoch, state))
        loop.writer.write(done, values)
        eta = (now - paced_from[1]) / (done - paced_from[0]) * (loop.num_steps - done)
        show = (now - shown >= loop.console_every_s or done == loop.num_steps or stop
                or any(k.endswith("_top1") for k in values))
        # On cached features (the linear stage with linear.augment="none") a step is a small
        # matmul on a batch of representations: the rate counts those, not images.
        _progress(loop, done, values, eta, "img" if "image" in batch else "feat", show)
        shown = now if show else shown
        pending, last_log, last_time, waited = None, done, time.time(), 0.0
      elif step == start:
        jax.block_until_ready(m)  # the first step compiled: time the steps after it
        last_log, last_time, waited = done, time.time(), 0.0
        paced_from = (last_log, last_time)
        epoch_from, epoch_waited = last_time, 0.0
      saved = loop.ckpt.due(done) or stop
      if saved:
        loop.ckpt.save(done, state)
      if stop:
        loop.ckpt.wait()
        how = "interrupted (Ctrl-C)" if watch.requested == "SIGINT" else "preempted"
        raise Preempted(f"[{loop.name}] {how} at step {done}; checkpoint saved in "
                        f"{loop.ckpt.directory}; rerun the same command to resume",
                        watch.requested or "SIGTERM")
  if not saved:
    loop.ckpt.save(loop.num_steps, state)
  loop.ckpt.wait()
  return state


def _warn_input_wait(loop: LoopSettings, done: int, fraction: float, warned: bool) -> bool:
  """Warns (once) when an epoch waited for its batches more than INPUT_WAIT_WARNING of its
  time; returns whether a warning has been given."""
  if warned or fraction <= INPUT_WAIT_WARNING:
    return warned
  logging.warning(
      "[%s] epoch %d waited for input %.0f%% of its time: the accelerator idles. What helps: "
      "data.in_memory=True (images that fit in device memory), more host CPU cores, a larger "
      "data.prefetch, or smaller images on disk", loop.name, done // loop.steps_per_epoch,
      100 * fraction)
  return True


def _check_finite(loop: LoopSettings, state: TrainState) -> int:
  """The count of non-finite steps so far; raises unless the config skips them."""
  bad = int(state.nonfinite_steps)
  if bad and not loop.skip_nonfinite:
    loop.ckpt.wait()  # so the message names the newest checkpoint actually written
    good = loop.ckpt.steps()
    raise NonFiniteError(
        # +1: steps are numbered as in the log and the checkpoints, by how many have run.
        f"[{loop.name}] non-finite loss or gradient at step {int(state.first_nonfinite) + 1}; "
        f"last good checkpoint: {f'step {good[-1]} in {loop.ckpt.directory}' if good else 'none'}"
        " (set config.skip_nonfinite=True to skip such steps)")
  return bad


def _progress(loop: LoopSettings, done: int, values: dict[str, float], eta: float, unit: str,
              show: bool) -> None:
  """The progress line of step `done`: always in log.txt, on the console if `show`."""
  evals = "".join(f" {k} {v:.2f}" for k, v in values.items() if k.endswith("_top1"))
  skipped = f" skipped {values['nonfinite_steps']:.0f}" if values["nonfinite_steps"] else ""
  logging.info("[%s] step %d/%d epoch %.1f loss %.4f lr %.3g %.0f %s/s (input wait %.0f%%) "
               "ETA %s%s%s", loop.name, done, loop.num_steps, done / loop.steps_per_epoch,
               values["loss"], values["lr"], values["images_per_sec"], unit,
               100 * values["input_wait_fraction"], _hms(eta), evals, skipped,
               extra={"console": show})


def _hms(seconds: float) -> str:
  """h:mm:ss, or m:ss under an hour."""
  m, s = divmod(int(seconds), 60)
  h, m = divmod(m, 60)
  return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"
