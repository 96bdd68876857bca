"""One thin wrapper over orbax's `CheckpointManager`.

A checkpoint holds two items: `state` (the whole train state: parameters, BatchNorm
statistics, optimiser state, step; the step is also the data position and the RNG
position, since both are derived from the seed and the step) and `meta`, a small JSON
record of what produced it: `identity`, the config values the run depends on (method,
model, loss, optimiser, batch, data), so that a resume under other values is refused with
one line naming them instead of continuing another run or failing with a shape error;
`rng_scheme`, how random keys were derived from the seed (rngs.RNG_SCHEME; 1 where it is
missing), so that a run is never continued with other random draws; and `schedule`, the
learning-rate schedule decided for the run.

Orbax writes each step into a temporary directory and renames it when complete, and
removes old steps only after a newer one is finalised, so a crash mid-save never costs
the last good checkpoint; the temporary directory such a crash leaves is removed when the
next run starts. A finalised step that cannot be read is skipped for the one before it
and renamed `<step>.unreadable` (kept for inspection, and out of the way of the resumed
run, which saves that step again).
"""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import os
import re
import resource
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils

from supcon_jax import rngs


class CheckpointError(RuntimeError):
  """Checkpoints that cannot be restored, do not belong to this run, or cannot be written."""


@dataclasses.dataclass(frozen=True)
class CheckpointRef:
  """One saved step of a checkpoint directory (e.g. the encoder a classifier was trained on).

  The directory is made absolute, so a run started from elsewhere names it alike.
  """
  directory: str
  step: int

  def __post_init__(self):
    if "://" not in self.directory:  # gs:// and the like already are
      object.__setattr__(self, "directory", os.path.abspath(self.directory))

  def __str__(self) -> str:
    return f"{self.directory}/{self.step}"


class Checkpointer:
  """Periodic, asynchronous saves of (state, meta) under `directory`, keeping the last N."""

  def __init__(self, directory: str, *, every_steps: int, keep: int, meta: dict[str, Any]):
    """meta["identity"]: {field: value} a restored checkpoint must agree with (on the keys
    both have: a checkpoint that recorded fewer fields is compared on those)."""
    self.directory = absolute(str(directory))
    self.every_steps = every_steps
    # JSON-normal (tuples become lists), so it compares equal to the meta a restore reads.
    self.meta = json.loads(json.dumps({**meta, "rng_scheme": rngs.RNG_SCHEME}))
    self.restored_meta: dict[str, Any] | None = None
    self._saving = None  # the step of the newest save started
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True, cleanup_tmp_directories=True,
        enable_async_checkpointing=True)
    self._manager = ocp.CheckpointManager(self.directory, options=options,
                                          item_names=("state", "meta"))

  def steps(self) -> list[int]:
    """The finalised steps in the directory, oldest first."""
    return sorted(self._manager.all_steps())

  def due(self, step: int) -> bool:
    """Whether the periodic schedule saves at `step`."""
    return step % self.every_steps == 0

  def set_meta(self, **fields: Any) -> None:
    """Adds `fields` to the meta of the checkpoints saved from now on."""
    self.meta.update(json.loads(json.dumps(fields)))

  def save(self, step: int, state: Any) -> None:
    """Starts an asynchronous save of `state` as `step` (the caller decides when)."""
    args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                              meta=ocp.args.JsonSave(self.meta))
    try:  # also where the previous asynchronous save's failure surfaces
      self._manager.save(step, args=args, force=True)
    except Exception as e:  # full disk, quota, permissions: orbax re-raises them all alike
      raise self._save_error(self._saving or step, e) from e
    self._saving = step

  def restore_latest(self, abstract_state: Any, *, step: int | None = None,
                     to_continue: bool = True) -> tuple[int, Any] | None:
    """Restores the newest readable checkpoint into the shardings of `abstract_state`.

    Returns None when the directory holds no checkpoint. A checkpoint that cannot be
    read is skipped for the one before it, with a warning; if none can be read, raises
    `CheckpointError` naming the directory rather than silently starting afresh. With
    `step`, restores exactly that checkpoint (FileNotFoundError if it is not there).
    `to_continue`: the run will go on from it, so it must have drawn its random keys as
    this version does (a finished state that is only read need not).
    """
    steps = self.steps()
    if step is not None:
      if step not in steps:
        raise FileNotFoundError(f"no checkpoint {step} in {self.directory}; it has {steps}")
      steps = [step]
    if not steps:
      return None
    unreadable = []
    for step in reversed(steps):
      try:
        meta = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
      except Exception as e:  # noqa: BLE001  orbax raises many kinds for a damaged step.
        logging.warning("checkpoint %d in %s is unreadable (%s); trying the previous one",
                        step, self.directory, _short(e))
        unreadable.append(step)
        continue
      self._check_same_run(meta["meta"], to_continue)
      try:
        restored = self._manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state)))
      except Exception as e:  # noqa: BLE001
        logging.warning("checkpoint %d in %s is unreadable (%s); trying the previous one",
                        step, self.directory, _short(e))
        unreadable.append(step)
        continue
      if unreadable:
        self._set_aside(unreadable)
        logging.warning("resuming from checkpoint %d, the newest readable one in %s",
                        step, self.directory)
      logging.info("restored checkpoint %d from %s", step, self.directory)
      self.restored_meta = meta["meta"]
      return step, restored["state"]
    raise CheckpointError(f"none of the checkpoints {steps} in {self.directory} could be read; "
                          "move the directory away to start afresh")

  def _set_aside(self, steps: list[int]) -> None:
    """Renames unreadable steps newer than the restored one: the run will save them anew."""
    if jax.process_index() == 0:
      for step in steps:
        path = epath.Path(self.directory) / str(step)
        path.rename(path.parent / f"{step}.unreadable")
        logging.warning("renamed unreadable checkpoint %s to %s.unreadable", path, step)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices("checkpoint_set_aside")
    self._manager.reload()

  def _check_same_run(self, saved: dict[str, Any], to_continue: bool) -> None:
    """CheckpointError naming each identity field whose value this run changes, or the
    random-number scheme when the run would continue with other draws."""
    scheme = saved.get("rng_scheme", 1)
    if to_continue and scheme != rngs.RNG_SCHEME:
      raise CheckpointError(
          f"workdir {os.path.dirname(self.directory)} was trained under random-number scheme "
          f"{scheme} and this version draws with scheme {rngs.RNG_SCHEME}, so it cannot "
          "continue that run (use a new workdir; its trained model still loads, e.g. "
          "--config.stage=linear --config.linear.encoder_workdir=THAT_WORKDIR)")
    theirs, mine = _identity(saved), self.meta.get("identity", {})
    differ = sorted(k for k in set(theirs) & set(mine) if theirs[k] != mine[k])
    if differ:
      show = lambda values: ", ".join(f"{k}={_plain(values[k])}" for k in differ)
      raise CheckpointError(
          f"workdir {os.path.dirname(self.directory)} was trained with {show(theirs)}; this "
          f"run asks for {show(mine)} (use a new workdir)")

  def _save_error(self, step: int, error: Exception) -> CheckpointError:
    good = self.steps()
    # tensorstore buries the cause ("No space left on device") deep in a long message, and
    # may raise it from another error (an OSError's "[Errno 28]" in Python's own writes).
    chain, e = [], error
    while e is not None and len(chain) < 8:
      chain.append(str(e))
      e = e.__cause__ or e.__context__
    code = re.search(r"os_error_code='?(\d+)|\[Errno (\d+)\]", " ".join(chain))
    if code:
      number = int(code[1] or code[2])
      reason = f"{os.strerror(number)} (errno {number})"
    else:  # a secondary error, with the OS's reason lost: say what room the writes had
      reason = f"{_short(error)}{_room(self.directory)}"
    return CheckpointError(
        f"could not save checkpoint {step} in {self.directory}: {reason}; the newest "
        f"complete checkpoint is {good[-1] if good else 'none'} (make room, then rerun the "
        "same command to resume from it)")

  def wait(self) -> None:
    """Blocks until every started save is finalised; CheckpointError if one failed."""
    try:
      self._manager.wait_until_finished()
    except Exception as e:
      raise self._save_error(self._saving, e) from e

  def close(self) -> None:
    """Finishes pending saves and releases the manager."""
    self._manager.close()


def absolute(path: str) -> str:
  """`path` as orbax saves and restores it: absolute (a remote one, gs://..., already is);
  relative, its saves fail after the first training steps."""
  return path if "://" in path else os.path.abspath(path)


def abstract(tree: Any) -> Any:
  """Shapes, dtypes and shardings of `tree`: the target that restore fills in."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


def _identity(meta: dict[str, Any]) -> dict[str, Any]:
  """A meta's identity; checkpoints from before it existed recorded `model` and `method`."""
  if "identity" in meta:
    return meta["identity"]
  legacy = {f"model.{k}": v for k, v in meta.get("model", {}).items()}
  return legacy | ({"method": meta["method"]} if "method" in meta else {})


def _plain(value: Any) -> str:
  return value if isinstance(value, str) else json.dumps(value)


def _room(directory: str) -> str:
  """Why writes under `directory` may have failed, where an error named no OS reason: a file
  size limit (ulimit -f) or a local disk with under 1 MiB free; "" if neither."""
  soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
  if soft != resource.RLIM_INFINITY:
    return (f" (most likely {os.strerror(errno.EFBIG)} (errno {errno.EFBIG}): this process "
            f"may write files of {soft} bytes at most)")
  try:
    disk = os.statvfs(directory)
  except OSError:  # not a local path (gs://...), or gone
    return ""
  free = disk.f_bavail * disk.f_frsize
  if free >= 1 << 20:
    return ""
  return (f" (most likely {os.strerror(errno.ENOSPC)} (errno {errno.ENOSPC}): {free} bytes "
          "are free there)")


def _short(e: Exception) -> str:
  text = f"{type(e).__name__}: {e}"
  return text.splitlines()[0][:200]
