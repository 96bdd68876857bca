"""Reliability: exact resume after SIGTERM or SIGKILL, damaged checkpoints, non-finite steps,
two processes equal to one, and a one-line error for every bad input.

The runs are real `python -m supcon_jax.main` processes on a tiny config (digits at 8x8,
ResNet-18 at width 1/8, 10 steps crossing two epoch boundaries) on two simulated devices
(one each for two processes). They share the tests' persistent compilation cache
(conftest), so only the first run of each program pays for compiling.
"""

import hashlib
import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from PIL import Image

from supcon_jax import checkpoint, config as config_lib, data, sharding

ROOT = Path(__file__).resolve().parents[1]
STEPS = 10  # 297 training digits (150 per class held out) at batch 64: 4 steps per epoch

CONFIG = f'''
from supcon_jax import config as config_lib


def get_config():
  c = config_lib.base_config()
  c.method = "supcon"
  c.stage = "pretrain"
  c.data.image_size = 8
  c.data.val_per_class = 150
  c.model.width = 0.125
  c.augment.policy = "cropflip"  # random crops and flips: the step keys matter
  c.batch_size = 64
  c.epochs = {STEPS} / 4
  c.optim.warmup_epochs = 0.5
  c.eval_every_epochs = 0
  c.log_every_steps = 1
  c.checkpoint_every_steps = 1
  c.keep_checkpoints = 100
  c.embedding_plot = False
  return c
'''


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
  """The config file every run of this module uses."""
  d = tmp_path_factory.mktemp("shared")
  (d / "tiny.py").write_text(CONFIG)
  return d


def _xla_flags(devices):
  """conftest's XLA flags with another simulated device count."""
  kept = [f for f in os.environ["XLA_FLAGS"].split() if "device_count" not in f]
  return " ".join(kept + [f"--xla_force_host_platform_device_count={devices}"])


def _env(shared, devices=2):
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3",
         "XLA_FLAGS": _xla_flags(devices),
         "PYTHONPATH": str(ROOT)}
  env.pop("JAX_COORDINATOR_ADDRESS", None)
  return env


def _start(shared, workdir, *overrides, devices=2, extra=(), max_file_bytes=None):
  args = [sys.executable, "-m", "supcon_jax.main", f"--config={shared / 'tiny.py'}",
          f"--workdir={workdir}", *overrides, *extra]

  def limit_files():  # as a full disk: writing past the limit fails with EFBIG
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # (its default is to kill the process)
    resource.setrlimit(resource.RLIMIT_FSIZE, (max_file_bytes, max_file_bytes))

  return subprocess.Popen(args, cwd=ROOT, env=_env(shared, devices), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True,
                          preexec_fn=limit_files if max_file_bytes else None)


def _finish(proc, timeout=300):
  out, err = proc.communicate(timeout=timeout)
  return proc.returncode, out + err


def _run(shared, workdir, *overrides):
  return _finish(_start(shared, workdir, *overrides))


def _steps(workdir):
  """Finalised checkpoint steps (orbax renames a step's directory once it is complete)."""
  d = Path(workdir) / "checkpoints"
  return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.is_dir() else []


def _load(workdir, step):
  """The saved train state as NumPy, read with orbax alone (not through the code under test)."""
  path = Path(workdir) / "checkpoints" / str(step) / "state"
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])  # whatever topology saved it
  with ocp.StandardCheckpointer() as c:
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                          dict(c.metadata(path).item_metadata))
    state = c.restore(path, target)
  return jax.tree.map(np.asarray, jax.device_get(state))


def _losses(workdir):
  with open(Path(workdir) / "metrics.jsonl") as f:
    return {r["step"]: r for r in map(json.loads, f)}


def _tensorboard_losses(logdir):
  """{step: loss} of every event file in `logdir`; AssertionError on a step seen twice."""
  from tensorboard.backend.event_processing import event_file_loader  # pylint: disable=g-import-not-at-top
  from tensorboard.util import tensor_util  # pylint: disable=g-import-not-at-top
  losses = {}
  for path in sorted(Path(logdir).glob("events.out.tfevents.*")):
    for event in event_file_loader.EventFileLoader(str(path)).Load():
      for value in event.summary.value:
        if value.tag == "loss":
          assert event.step not in losses, f"step {event.step} twice in {logdir}"
          losses[event.step] = float(tensor_util.make_ndarray(value.tensor))
  return losses


def _tree_hash(path):
  h = hashlib.sha256()
  for p in sorted(Path(path).rglob("*")):
    h.update(str(p.relative_to(path)).encode())
    if p.is_file():
      h.update(p.read_bytes())
  return h.hexdigest()


def _assert_user_error(rc, log, *names):
  """Exit code 1, no traceback, and a one-line `error:` naming every culprit."""
  assert rc == 1, log
  assert "Traceback" not in log, log
  lines = [l for l in log.splitlines() if l.startswith("error: ")]
  assert len(lines) == 1, log
  for name in names:
    assert str(name) in lines[0], lines[0]


@pytest.fixture(scope="module")
def reference(shared):
  """An uninterrupted run of STEPS steps, keeping every checkpoint."""
  workdir = shared / "reference"
  rc, log = _run(shared, workdir)
  assert rc == 0, log
  assert _steps(workdir) == list(range(1, STEPS + 1))
  return workdir


def _wait_for_step(proc, workdir, at_least, seen):
  """Polls until a finalised step >= at_least; records every listing in `seen`."""
  deadline = time.time() + 240
  while time.time() < deadline:
    steps = _steps(workdir)
    seen.append(steps)
    if steps and steps[-1] >= at_least:
      return steps[-1]
    assert proc.poll() is None, _finish(proc)[1]
    time.sleep(0.02)
  proc.kill()
  raise AssertionError(f"no checkpoint >= {at_least} in time")


def test_sigterm_sigkill_and_a_damaged_checkpoint_still_resume_exactly(shared, reference):
  workdir = shared / "interrupted"
  keep = "--config.keep_checkpoints=2"
  # SIGTERM: checkpoint at the end of the step, exit 0.
  proc = _start(shared, workdir, keep)
  seen = []
  _wait_for_step(proc, workdir, 2, seen)
  proc.send_signal(signal.SIGTERM)
  rc, log = _finish(proc)
  assert rc == 0, log
  stopped = int(re.search(r"preempted at step (\d+)", log).group(1))
  assert 2 <= stopped < STEPS and _steps(workdir)[-1] == stopped, (stopped, _steps(workdir))
  # Restarted with the same command, then SIGKILL at an arbitrary moment (maybe mid-save).
  proc = _start(shared, workdir, keep)
  _wait_for_step(proc, workdir, stopped + 3, seen)
  proc.kill()
  rc, log = _finish(proc)
  assert rc == -signal.SIGKILL
  assert f"restored checkpoint {stopped} " in log, log
  # Old steps are deleted only once a newer one is complete: never zero checkpoints.
  first = next(i for i, s in enumerate(seen) if s)
  assert all(seen[first:]), seen
  # Damage the newest checkpoint and leave a half-written save behind.
  steps = _steps(workdir)[-2:]  # a third while orbax deletes the oldest
  assert len(steps) == 2, steps
  newest = Path(workdir) / "checkpoints" / str(steps[-1])
  for f in (newest / "state").rglob("*"):
    if f.is_file() and f.parent.name == "d":
      f.write_bytes(f.read_bytes()[:10])
  partial = Path(workdir) / "checkpoints" / f"{steps[-1] + 1}.orbax-checkpoint-tmp"
  partial.mkdir(exist_ok=True)
  (partial / "junk").write_text("half a save")
  with open(Path(workdir) / "metrics.jsonl", "a") as f:
    f.write('{"step": 9, "loss": 5.2')  # half a line, as a killed writer leaves it

  rc, log = _run(shared, workdir)
  assert rc == 0, log
  assert f"checkpoint {steps[-1]} in {workdir / 'checkpoints'} is unreadable" in log, log
  assert f"resuming from checkpoint {steps[0]}" in log, log
  leftovers = [p.name for p in (Path(workdir) / "checkpoints").iterdir()
               if not p.name.isdigit()]
  assert leftovers == [f"{steps[-1]}.unreadable"], leftovers
  # Bitwise the uninterrupted run: parameters, BN statistics, optimiser state, counters.
  mine, ref = _load(workdir, STEPS), _load(reference, STEPS)
  assert jax.tree.structure(mine) == jax.tree.structure(ref)
  for a, b in zip(jax.tree.leaves(mine), jax.tree.leaves(ref)):
    np.testing.assert_array_equal(a, b)
  first_params = jax.tree.leaves(_load(reference, 1)["params"])
  assert any(not np.array_equal(a, b) for a, b in zip(first_params,
                                                      jax.tree.leaves(ref["params"])))
  # metrics.jsonl and TensorBoard hold every step once, with the reference's loss exactly:
  # rows logged past a checkpoint by a killed run, and its half line, are gone.
  ref_rows = _losses(reference)
  with open(Path(workdir) / "metrics.jsonl") as f:
    rows = [json.loads(line) for line in f]
  assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
  assert [r["loss"] for r in rows] == [ref_rows[r["step"]]["loss"] for r in rows]
  events = _tensorboard_losses(Path(workdir) / "tensorboard")
  assert sorted(events) == list(range(1, STEPS + 1)), events
  np.testing.assert_allclose([events[s] for s in sorted(events)], [r["loss"] for r in rows],
                             rtol=1e-6)


def test_no_readable_checkpoint_is_an_error_naming_the_directory(tmp_path):
  mesh = sharding.make_mesh()
  state = sharding.replicate({"w": np.arange(4.0, dtype=np.float32)}, mesh)
  ckpt = checkpoint.Checkpointer(str(tmp_path), every_steps=1, keep=3, meta={"model": {}})
  for step in (1, 2):
    ckpt.save(step, state)
    ckpt.wait()
  ckpt.close()
  for step in (1, 2):
    for f in (tmp_path / str(step) / "state").rglob("*"):
      if f.is_file():
        f.write_bytes(b"")
  before = _tree_hash(tmp_path)
  ckpt = checkpoint.Checkpointer(str(tmp_path), every_steps=1, keep=3, meta={"model": {}})
  with pytest.raises(checkpoint.CheckpointError, match=re.escape(str(tmp_path))):
    ckpt.restore_latest(checkpoint.abstract(state))
  ckpt.close()
  assert _tree_hash(tmp_path) == before


def test_nonfinite_step_stops_naming_step_and_checkpoint_unless_skipped(shared, tmp_path):
  # SGD at lr 1e30 with no warm-up: step 1 is finite, its update overflows everything after.
  explode = ("--config.optim.name=sgd", "--config.optim.base_lr=1e30",
             "--config.optim.warmup_epochs=0")
  rc, log = _run(shared, tmp_path, *explode)
  _assert_user_error(rc, log, "non-finite", "step 2", f"step 1 in {tmp_path / 'checkpoints'}")
  assert _steps(tmp_path) == [1]
  for leaf in jax.tree.leaves(_load(tmp_path, 1)):
    assert np.isfinite(leaf).all()
  rc, log = _run(shared, tmp_path, *explode, "--config.skip_nonfinite=True",
                 "--config.epochs=1")
  assert rc == 0, log
  rows = _losses(tmp_path)
  assert rows[4]["nonfinite_steps"] == 3, rows[4]
  assert _steps(tmp_path)[-1] == 4
  for leaf in jax.tree.leaves(_load(tmp_path, 4)):
    assert np.isfinite(leaf).all()


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _image(path, value, size=8):
  Image.fromarray(np.full((size, size, 3), value, np.uint8)).save(path)


def _folder(root, classes=("a", "b"), per_class=6):
  for c, name in enumerate(classes):
    (root / name).mkdir(parents=True)
    for i in range(per_class):
      _image(root / name / f"{i}.png", 10 * (c * per_class + i) + 5)
  return root


def _folder_config(train_dir, **fields):
  c = config_lib.base_config()
  c.data.source, c.data.train_dir, c.data.num_classes = "folder", str(train_dir), 2
  c.data.image_size = 8
  for k, v in fields.items():
    setattr(c.data, k, v)
  return c.data


def test_each_process_reads_only_its_share_of_a_folder(tmp_path, monkeypatch):
  root = _folder(tmp_path / "train")
  files = data.list_images(str(root))
  mesh = sharding.make_mesh(2)  # one device per pretend process
  seen = {}
  for p in (0, 1):
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    monkeypatch.setattr(jax, "process_index", lambda p=p: p)
    source = data.make_source(_folder_config(root), split="train", global_batch=4, mesh=mesh,
                              seed=0)
    stream = source.train_batches(0)
    batches = [next(stream) for _ in range(source.steps_per_epoch)]
    monkeypatch.undo()
    # Each image is one flat value that identifies its file.
    seen[p] = sorted(int(np.asarray(b["image"])[i, 0, 0, 0])
                     for b in batches for i in range(b["image"].shape[0]))
  values = [10 * i + 5 for i in range(len(files))]
  assert seen[0] == values[0::2] and seen[1] == values[1::2], seen


def test_bad_folders_name_the_culprit(tmp_path):
  root = _folder(tmp_path / "train")
  bad = root / "a" / "3.png"
  bad.write_bytes(bad.read_bytes()[:20])
  files = data.list_images(str(root))
  with pytest.raises(ValueError, match=re.escape(str(bad))):
    data.folder.load_images(files, 8)
  images, _, skipped = data.folder.load_images(files, 8, bad_images="skip")
  assert skipped == 1 and len(images) == len(files) - 1
  (root / "b" / "notes.txt").write_text("not an image")
  with pytest.raises(ValueError, match=re.escape(str(root / "b" / "notes.txt"))):
    data.list_images(str(root))
  empty = _folder(tmp_path / "t2")
  (empty / "c").mkdir()
  with pytest.raises(ValueError, match=re.escape(str(empty / "c"))):
    data.list_images(str(empty))
  other = _folder(tmp_path / "eval", classes=("a", "z"))
  cfg = _folder_config(tmp_path / "t3", eval_dir=str(other))
  _folder(tmp_path / "t3")
  with pytest.raises(ValueError, match=r"only in eval \['z'\], only in train \['b'\]"):
    data.folder.folder_files(cfg, "eval")


@pytest.mark.parametrize("field,value,message", [
    ("model.depth", 19, "config.model.depth=19"),
    ("method", "supcom", "config.method='supcom'"),
    ("augment.policy", "simaug", "config.augment.policy='simaug'"),
    ("loss.temperature", 0.0, "config.loss.temperature=0.0"),
    ("augment.n_views", 0, "config.augment.n_views=0"),
    ("data.image_size", 16, "config.data.image_size=16 is too small for the imagenet stem"),
])
def test_bad_config_values_name_the_field(field, value, message):
  c = config_lib.base_config()
  c.model.stem = "imagenet"
  section, _, name = field.rpartition(".")
  setattr(c.get(section) if section else c, name, value)
  with pytest.raises(ValueError, match=re.escape(message)):
    config_lib.validate(c)


def test_bad_data_values_name_the_culprit():
  mesh = sharding.make_mesh()
  c = config_lib.base_config()
  c.data.name = "cifar_ten"
  with pytest.raises(ValueError, match="data.name='cifar_ten'"):
    data.make_source(c.data, split="train", global_batch=64, mesh=mesh, seed=0)
  c.data.name = "digits"
  with pytest.raises(ValueError, match="batch_size=60 is not divisible by the 8 devices"):
    data.make_source(c.data, split="train", global_batch=60, mesh=mesh, seed=0)
  images = np.zeros((16, 8, 8, 3), np.uint8)
  labels = np.arange(16) % 11
  with pytest.raises(ValueError, match=r"label 10 is outside \[0, 10\)"):
    data.ArraySource.from_arrays(images, labels, num_classes=10, global_batch=8, mesh=mesh)


def test_cli_user_errors_are_one_line_and_leave_checkpoints_untouched(shared, reference,
                                                                     tmp_path):
  work = tmp_path / "work"
  shutil.copytree(Path(reference) / "checkpoints" / "3", work / "checkpoints" / "3")
  shutil.copy(Path(reference) / "metrics.jsonl", work / "metrics.jsonl")
  before = _tree_hash(work)
  folder = _folder(tmp_path / "images")
  broken = folder / "b" / "2.png"
  broken.write_bytes(broken.read_bytes()[:20])
  blocker = tmp_path / "a_file"
  blocker.write_text("")
  cases = [  # (extra arguments, workdir, names expected in the error line)
      (("--config.batch_sise=64", "--dry_run"), work, ("batch_sise", "batch_size")),
      (("--config.loss.temperature=-1", "--dry_run"), work, ("config.loss.temperature",)),
      (("--config.model.width=0.25",), work, (
          f"workdir {work} was trained with model.width=0.125; this run asks for "
          "model.width=0.25 (use a new workdir)",)),
      (("--config.method=simclr", "--config.loss.temperature=0.5"), work, (
          f"workdir {work} was trained with loss.temperature=0.1, method=supcon; this run asks "
          "for loss.temperature=0.5, method=simclr (use a new workdir)",)),
      (("--config.batch_size=63",), work, ("batch_size=63", "2 devices")),
      ((), blocker / "run", (blocker / "run",)),
      (("--config.data.source=folder", f"--config.data.train_dir={folder}",
        "--config.data.val_per_class=1", "--config.data.num_classes=2",
        "--config.data.in_memory=True"), tmp_path / "w2", (broken, "bad_images")),
  ]
  procs = [_start(shared, wd, *args) for args, wd, _ in cases]
  for proc, (args, _, names) in zip(procs, cases):
    rc, log = _finish(proc)
    _assert_user_error(rc, log, *names)
  assert _tree_hash(work) == before  # nothing written, nothing removed


def _two_processes(shared, workdir, *overrides):
  port = _free_port()
  return [_start(shared, workdir, *overrides, devices=1,
                 extra=("--distributed", f"--coordinator_address=127.0.0.1:{port}",
                        "--num_processes=2", f"--process_id={i}")) for i in range(2)]


def test_two_processes_match_one_share_checkpoints_and_stop_together(shared, reference,
                                                                     tmp_path):
  # Resume the one-process run's step 3 (on two devices) with two processes of one each.
  start = 3
  shutil.copytree(Path(reference) / "checkpoints" / str(start),
                  tmp_path / "checkpoints" / str(start))
  procs = _two_processes(shared, tmp_path)
  _wait_for_step(procs[0], tmp_path, start + 2, [])
  procs[1].send_signal(signal.SIGTERM)  # only the second process is told
  results = [_finish(p) for p in procs]
  for rc, log in results:
    assert rc == 0, log
  assert "2 processes" in results[0][1] and f"restored checkpoint {start} " in results[0][1]
  stopped = {int(re.search(r"preempted at step (\d+)", log).group(1)) for _, log in results}
  assert len(stopped) == 1, stopped  # both stopped after the same step ...
  stopped = stopped.pop()
  assert start + 2 <= stopped < STEPS and _steps(tmp_path)[-1] == stopped
  assert int(_load(tmp_path, stopped)["step"]) == stopped  # ... with one complete checkpoint
  results = [_finish(p) for p in _two_processes(shared, tmp_path)]
  for rc, log in results:
    assert rc == 0 and f"restored checkpoint {stopped} " in log, log
  rows, ref_rows = _losses(tmp_path), _losses(reference)
  assert sorted(rows) == list(range(start + 1, STEPS + 1))
  np.testing.assert_allclose([rows[s]["loss"] for s in rows],
                             [ref_rows[s]["loss"] for s in rows], rtol=1e-5)
  # The two-process checkpoint, read back by this one process. Two processes sum gradients
  # and statistics in another order than one: after 7 steps the parameters agree to ~1e-3.
  mine, ref = _load(tmp_path, STEPS), _load(reference, STEPS)
  assert int(mine["step"]) == STEPS
  for a, b in zip(jax.tree.leaves(mine["params"]), jax.tree.leaves(ref["params"])):
    np.testing.assert_allclose(a, b, rtol=5e-3, atol=1e-4)


def test_a_full_disk_stops_the_run_in_one_line_and_the_last_checkpoint_restores(shared, reference,
                                                                              tmp_path):
  start = STEPS // 2
  shutil.copytree(Path(reference) / "checkpoints" / str(start),
                  tmp_path / "checkpoints" / str(start))
  # Files may grow to 64 KiB: the logs and metrics fit, a checkpoint's parameters do not.
  rc, log = _finish(_start(shared, tmp_path, max_file_bytes=64 * 1024))
  # orbax's writers log their own tracebacks as they fail; the run ends with one line.
  assert rc == 1, log
  last = log.strip().splitlines()[-1]
  assert [l for l in log.splitlines() if l.startswith("error: ")] == [last], log
  for name in (f"could not save checkpoint {start + 1} in {tmp_path / 'checkpoints'}",
               "File too large (errno 27)", f"the newest complete checkpoint is {start}"):
    assert name in last, last
  assert _steps(tmp_path) == [start]
  rc, log = _run(shared, tmp_path)  # space again: the same command resumes
  assert rc == 0 and f"restored checkpoint {start} " in log, log
  mine, ref = _load(tmp_path, STEPS), _load(reference, STEPS)
  for a, b in zip(jax.tree.leaves(mine), jax.tree.leaves(ref)):
    np.testing.assert_array_equal(a, b)


def test_checkpoints_from_before_the_identity_still_resume(tmp_path):
  config = config_lib.base_config()
  mesh = sharding.make_mesh()
  state = sharding.replicate({"w": np.arange(4.0, dtype=np.float32)}, mesh)
  old = checkpoint.Checkpointer(str(tmp_path), every_steps=1, keep=3, meta={
      "model": config.model.to_dict(), "method": "supcon"})  # what older runs recorded
  old.save(1, state)
  old.wait()
  old.close()
  new = checkpoint.Checkpointer(str(tmp_path), every_steps=1, keep=3,
                                meta={"identity": config_lib.identity(config)})
  assert new.restore_latest(checkpoint.abstract(state))[0] == 1
  new.close()
  config.model.depth = 50
  other = checkpoint.Checkpointer(str(tmp_path), every_steps=1, keep=3,
                                  meta={"identity": config_lib.identity(config)})
  with pytest.raises(checkpoint.CheckpointError, match="model.depth=18; this run asks for "
                                                       "model.depth=50"):
    other.restore_latest(checkpoint.abstract(state))
  other.close()
