"""Reliability: exact resume after SIGTERM or SIGKILL, damaged checkpoints, non-finite steps,
checkpoints of another run refused, and a one-line error for every bad input.

The runs are real processes of the trainer (tests/cli_runs.py); tests/test_reliability_processes.py
has the faults that need two processes or a full disk.
"""

import itertools
import json
import os
import re
import resource
import shutil
import signal
import time
from pathlib import Path
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from PIL import Image

from supcon_jax import checkpoint, data, experiment, metrics, sharding, train
from supcon_jax import config as config_lib
from tests import cli_runs
from tests.cli_runs import STEPS


def test_sigterm_sigkill_and_a_damaged_checkpoint_still_resume_exactly(config_dir, reference_run):
  workdir = config_dir / "interrupted"
  # TensorBoard on: its events must also hold every step once after all of it.
  keep = ("--config.keep_checkpoints=2", "--config.tensorboard=True")
  # SIGTERM: checkpoint at the end of the step, exit 0.
  proc = cli_runs.start(config_dir, workdir, *keep)
  seen = []
  cli_runs.wait_for_step(proc, workdir, 2, seen)
  proc.send_signal(signal.SIGTERM)
  rc, log = cli_runs.finish(proc)
  assert rc == 0, log
  stopped = int(re.search(r"preempted at step (\d+)", log).group(1))
  assert 2 <= stopped < STEPS and cli_runs.steps(workdir)[-1] == stopped, (
      stopped, cli_runs.steps(workdir))
  # Restarted with the same command, then SIGKILL at an arbitrary moment (maybe mid-save).
  proc = cli_runs.start(config_dir, workdir, *keep)
  cli_runs.wait_for_step(proc, workdir, stopped + 3, seen)
  proc.kill()
  rc, log = cli_runs.finish(proc)
  assert rc == -signal.SIGKILL
  assert f"restored checkpoint {stopped} " in log, log
  # Old steps are deleted only once a newer one is complete: never zero checkpoints.
  first = next(i for i, s in enumerate(seen) if s)
  assert all(seen[first:]), seen
  # Damage the newest checkpoint and leave a half-written save behind.
  steps = cli_runs.steps(workdir)[-2:]  # a third while orbax deletes the oldest
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

  rc, log = cli_runs.run(config_dir, workdir, "--config.tensorboard=True")
  assert rc == 0, log
  assert f"checkpoint {steps[-1]} in {workdir / 'checkpoints'} is unreadable" in log, log
  assert f"resuming from checkpoint {steps[0]}" in log, log
  leftovers = [p.name for p in (Path(workdir) / "checkpoints").iterdir()
               if not p.name.isdigit()]
  assert leftovers == [f"{steps[-1]}.unreadable"], leftovers
  # Bitwise the uninterrupted run: parameters, BN statistics, optimiser state, counters.
  mine, ref = cli_runs.load(workdir, STEPS), cli_runs.load(reference_run, STEPS)
  assert jax.tree.structure(mine) == jax.tree.structure(ref)
  for a, b in zip(jax.tree.leaves(mine), jax.tree.leaves(ref)):
    np.testing.assert_array_equal(a, b)
  first_params = jax.tree.leaves(cli_runs.load(reference_run, 1)["params"])
  assert any(not np.array_equal(a, b) for a, b in zip(first_params,
                                                      jax.tree.leaves(ref["params"])))
  # metrics.jsonl and TensorBoard hold every step once, with the reference run's loss exactly:
  # rows logged past a checkpoint by a killed run, and its half line, are gone.
  ref_rows = cli_runs.losses(reference_run)
  with open(Path(workdir) / "metrics.jsonl") as f:
    rows = [json.loads(line) for line in f]
  assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
  assert [r["loss"] for r in rows] == [ref_rows[r["step"]]["loss"] for r in rows]
  events = cli_runs.tensorboard_losses(Path(workdir) / "tensorboard")
  assert sorted(events) == list(range(1, STEPS + 1)), events
  np.testing.assert_allclose([events[s] for s in sorted(events)], [r["loss"] for r in rows],
                             rtol=1e-6)


def test_ctrl_c_saves_at_the_end_of_the_step_and_exits_130_in_one_line(config_dir, tmp_path):
  # A long run without periodic checkpoints: only the interrupt saves.
  once = tmp_path / "once"
  proc = cli_runs.start(config_dir, once, "--config.epochs=50",
                        "--config.checkpoint_every_steps=1000")
  _wait_for_row(proc, once, 2)
  proc.send_signal(signal.SIGINT)
  rc, log = cli_runs.finish(proc)
  assert rc == 130, log
  assert "Traceback" not in log and "KeyboardInterrupt" not in log, log
  said = [line for line in log.splitlines() if "Ctrl-C" in line or "SIGINT" in line]
  assert len(said) == 1, log
  stopped = int(re.search(r"interrupted \(Ctrl-C\) at step (\d+); checkpoint saved in "
                          + re.escape(str(once / "checkpoints")), said[0]).group(1))
  assert cli_runs.steps(once) == [stopped]
  # The trainer's own record (log.txt): the signal, then at most the step in flight and the
  # one after it (its save waits for them), not a queue of steps.
  record = (once / "log.txt").read_text().split("SIGINT: checkpointing")[1]
  assert len(re.findall(r"\[supcon\] step \d+/", record)) <= 2, record


def test_a_second_ctrl_c_interrupts_at_once():
  # The watch answers the first Ctrl-C with a flag, then hands SIGINT back: the second one
  # raises KeyboardInterrupt where the program is (main.py: one line, exit 130).
  previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal
  try:
    with train.PreemptionWatch() as watch:
      os.kill(os.getpid(), signal.SIGINT)
      time.sleep(0.1)  # Python runs the handler between bytecodes
      assert watch.should_stop(1) and watch.requested == "SIGINT"
      with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(1)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored
  finally:
    signal.signal(signal.SIGINT, previous)


def test_sigterm_saves_a_checkpoint_where_none_is_due(tmp_path):
  # Checkpoints every 1,000 steps, a SIGTERM while the third batch is read: the step runs,
  # then its state is saved and the loop stops, though no periodic save is due.
  mesh = sharding.make_mesh()
  tx = optax.sgd(0.1)
  step = train.make_step(lambda p, bs, batch, rng: (jnp.sum(p["w"] * batch["x"]), bs), tx, mesh)
  batch = sharding.to_global({"x": np.ones((8, 2), np.float32)}, mesh)

  def batches(start):
    for i in itertools.count(start):
      if i == 2:
        os.kill(os.getpid(), signal.SIGTERM)
      yield batch

  ckpt = checkpoint.Checkpointer(str(tmp_path / "checkpoints"), every_steps=1000, keep=2,
                                 meta={})
  loop = train.LoopSettings(name="t", num_steps=100, steps_per_epoch=100, images_per_step=8,
                            ckpt=ckpt, writer=metrics.Writer(str(tmp_path), tensorboard=False),
                            log_every=1000, skip_nonfinite=False)
  previous = signal.getsignal(signal.SIGTERM)
  with loop.writer, pytest.raises(train.Preempted, match="preempted at step 3"):
    train.fit(loop, train.create_state({"w": jnp.ones((2,))}, {}, tx, mesh), step, batches,
              jax.random.key(0))
  assert ckpt.steps() == [3]
  assert signal.getsignal(signal.SIGTERM) is previous  # the handler is put back
  ckpt.close()


def _wait_for_row(proc, workdir, step):
  """Polls until metrics.jsonl has the row of `step`."""
  deadline = time.time() + 240
  while time.time() < deadline:
    rows = workdir / "metrics.jsonl"
    text = rows.read_text() if rows.exists() else ""
    logged = [int(n) for n in re.findall(r'"step": (\d+)', text)]
    if logged and max(logged) >= step:
      return
    assert proc.poll() is None, cli_runs.finish(proc)[1]
    time.sleep(0.05)
  raise AssertionError(f"no row {step} in time")


def test_a_resume_that_changes_the_run_names_every_field_it_changes(tmp_path):
  mesh = sharding.make_mesh()
  state = train.create_state({"w": jnp.ones((2,))}, {}, optax.sgd(0.1), mesh)
  config = config_lib.base_config()
  identity = lambda c: {"identity": config_lib.identity(c)}
  saver = checkpoint.Checkpointer(str(tmp_path / "checkpoints"), every_steps=1, keep=1,
                                  meta=identity(config))
  saver.save(1, state)
  saver.close()
  config.method = "simclr"  # alone: the states have the same shapes
  changed = [("method=supcon; this run asks for method=simclr", config)]
  both = config_lib.base_config()
  both.method, both.loss.temperature = "simclr", 0.5
  changed.append(("loss.temperature=0.1, method=supcon; this run asks for "
                  "loss.temperature=0.5, method=simclr", both))
  for message, c in changed:
    ckpt = checkpoint.Checkpointer(str(tmp_path / "checkpoints"), every_steps=1, keep=1,
                                   meta=identity(c))
    with pytest.raises(checkpoint.CheckpointError, match=re.escape(
        f"workdir {tmp_path} was trained with {message} (use a new workdir)")):
      train.resume(state, ckpt)
    ckpt.close()


def test_a_relative_directory_saves_and_restores(tmp_path, monkeypatch):
  # `--workdir=workdirs/run`, as the README's commands give it: orbax takes absolute paths only.
  monkeypatch.chdir(tmp_path)
  state = sharding.replicate({"w": np.arange(4.0, dtype=np.float32)}, sharding.make_mesh())
  ckpt = checkpoint.Checkpointer(os.path.join("workdirs", "run"), every_steps=1, keep=3,
                                 meta={})
  ckpt.save(1, state)
  ckpt.wait()
  ckpt.close()
  assert (tmp_path / "workdirs" / "run" / "1" / "state").is_dir()
  ckpt = checkpoint.Checkpointer("workdirs/run", every_steps=1, keep=3, meta={})
  step, restored = ckpt.restore_latest(checkpoint.abstract(state))
  ckpt.close()
  assert step == 1
  np.testing.assert_array_equal(restored["w"], np.arange(4.0))


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
  before = cli_runs.tree_hash(tmp_path)
  ckpt = checkpoint.Checkpointer(str(tmp_path), every_steps=1, keep=3, meta={"model": {}})
  with pytest.raises(checkpoint.CheckpointError, match=re.escape(str(tmp_path))):
    ckpt.restore_latest(checkpoint.abstract(state))
  ckpt.close()
  assert cli_runs.tree_hash(tmp_path) == before


def test_nonfinite_step_stops_naming_step_and_checkpoint_unless_skipped(config_dir, tmp_path):
  # SGD at lr 1e30 with no warm-up: step 1 is finite, its update overflows everything after.
  explode = ("--config.optim.name=sgd", "--config.optim.base_lr=1e30",
             "--config.optim.warmup_epochs=0")
  rc, log = cli_runs.run(config_dir, tmp_path, *explode)
  cli_runs.assert_user_error(rc, log, "non-finite", "step 2",
                             f"step 1 in {tmp_path / 'checkpoints'}")
  assert cli_runs.steps(tmp_path) == [1]
  for leaf in jax.tree.leaves(cli_runs.load(tmp_path, 1)):
    assert np.isfinite(leaf).all()
  rc, log = cli_runs.run(config_dir, tmp_path, *explode, "--config.skip_nonfinite=True",
                 "--config.epochs=1")
  assert rc == 0, log
  rows = cli_runs.losses(tmp_path)
  assert rows[4]["nonfinite_steps"] == 3, rows[4]
  assert cli_runs.steps(tmp_path)[-1] == 4
  for leaf in jax.tree.leaves(cli_runs.load(tmp_path, 4)):
    assert np.isfinite(leaf).all()


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
    ("loss.denominator_mode", "some", "config.loss.denominator_mode='some'"),
    ("loss.positives_cap", 3, "config.loss.positives_cap=3 must be an integer, < 0 for no cap "
                              "or a multiple of the 2 views of a sample"),
    ("augment.small_views", -1, "augment.small_views=-1: expected an integer >= 0"),
    ("augment.small_size", 16, "config.augment.small_size=16 is too small for the imagenet"),
    ("loss.cross_entropy_weight", -1.0, "config.loss.cross_entropy_weight=-1.0 must be a "
                                        "finite weight >= 0"),
    ("data.label_noise", 1.5, "config.data.label_noise=1.5 must be a fraction"),
    ("finetune.crop_scale", (0.5, 0.2), "config.finetune.crop_scale=(0.5, 0.2): expected (lo, "
                                        "hi) with 0 < lo <= hi <= 1"),
    ("profile_steps", "5", "config.profile_steps='5': expected 'A,B'"),
    ("profile_steps", "5,2", "config.profile_steps='5,2': expected 'A,B'"),
])
def test_bad_config_values_name_the_field(field, value, message):
  c = config_lib.base_config()
  c.model.stem = "imagenet"
  section, _, name = field.rpartition(".")
  setattr(c.get(section) if section else c, name, value)
  with pytest.raises(ValueError, match=re.escape(message)):
    experiment.validate(c)


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


def test_cli_user_errors_are_one_line_and_leave_checkpoints_untouched(config_dir, reference_run,
                                                                     tmp_path):
  work = tmp_path / "work"
  shutil.copytree(Path(reference_run) / "checkpoints" / "3", work / "checkpoints" / "3")
  shutil.copy(Path(reference_run) / "metrics.jsonl", work / "metrics.jsonl")
  before = cli_runs.tree_hash(work)
  folder = _folder(tmp_path / "images")
  broken = folder / "b" / "2.png"
  broken.write_bytes(broken.read_bytes()[:20])
  blocker = tmp_path / "a_file"
  blocker.write_text("")
  old = tmp_path / "old_scheme"  # a run of a version before the named random streams
  shutil.copytree(Path(reference_run) / "checkpoints" / "3", old / "checkpoints" / "3")
  meta_file = old / "checkpoints" / "3" / "meta" / "metadata"
  meta = json.loads(meta_file.read_text())
  del meta["rng_scheme"]
  meta_file.write_text(json.dumps(meta))
  streamed = _folder(tmp_path / "streamed")  # read by tf.data, file by file, as it trains
  (streamed / "a" / "9.png").write_bytes(b"")
  misspelt = tmp_path / "misspelt_config"
  misspelt.mkdir()
  (misspelt / "tiny.py").write_text(
      cli_runs.CONFIG.replace("  return c", "  c.batch_sise = 3\n  return c"))
  cases = [  # (extra arguments, workdir, names expected in the error line)
      (("--config.batch_sise=64", "--dry_run"), work, ("batch_sise", "batch_size")),
      (("--dry_run", "--config.batch_size=63"), work, ("config.batch_size=63", "2 devices")),
      ((), old, (f"workdir {old} was trained under random-number scheme 1",
                 "cannot continue that run")),
      (("--config.data.source=folder", f"--config.data.train_dir={streamed}",
        "--config.data.val_per_class=1", "--config.data.num_classes=2",
        "--config.batch_size=4"), tmp_path / "w8", (streamed / "a" / "9.png", "bad_images")),
      (("--config.model.width=0.25",), work, (
          f"workdir {work} was trained with model.width=0.125; this run asks for "
          "model.width=0.25 (use a new workdir)",)),
      ((), blocker / "run", (blocker / "run",)),
      (("--config.data.source=folder", f"--config.data.train_dir={folder}",
        "--config.data.val_per_class=1", "--config.data.num_classes=2",
        "--config.data.in_memory=True"), tmp_path / "w2", (broken, "bad_images")),
  ]
  procs = [cli_runs.start(config_dir, wd, *args) for args, wd, _ in cases]
  procs.append(cli_runs.start(misspelt, tmp_path / "w7", "--dry_run"))
  cases.append(((), None, ("config.batch_sise is not a config field (did you mean batch_size?)",)))
  for proc, (_, _, names) in zip(procs, cases):
    rc, log = cli_runs.finish(proc)
    cli_runs.assert_user_error(rc, log, *names)
    assert "rendezvous" not in log and "oneDNN" not in log, log  # no TensorFlow noise
  assert cli_runs.tree_hash(work) == before  # nothing written, nothing removed
  for refused in (old / "checkpoints" / "4", tmp_path / "w8" / "checkpoints"):
    assert not refused.exists(), refused  # refused before the first step


def test_checkpoints_of_older_versions_are_read_but_not_continued(tmp_path):
  config = config_lib.base_config()
  mesh = sharding.make_mesh()
  state = sharding.replicate({"w": np.arange(4.0, dtype=np.float32)}, mesh)
  old = checkpoint.Checkpointer(str(tmp_path), every_steps=1, keep=3, meta={
      "model": config.model.to_dict(), "method": "supcon"})  # what older runs recorded
  old.save(1, state)
  old.wait()
  old.close()
  meta_file = tmp_path / "1" / "meta" / "metadata"  # ... before the random streams: no scheme
  meta = json.loads(meta_file.read_text())
  del meta["rng_scheme"]
  meta_file.write_text(json.dumps(meta))
  new = checkpoint.Checkpointer(str(tmp_path), every_steps=1, keep=3,
                                meta={"identity": config_lib.identity(config)})
  with pytest.raises(checkpoint.CheckpointError, match="random-number scheme 1 .* scheme 2"):
    new.restore_latest(checkpoint.abstract(state))  # a run would continue it: refused
  assert new.restore_latest(checkpoint.abstract(state), to_continue=False)[0] == 1  # read: fine
  new.close()
  config.model.depth = 50
  other = checkpoint.Checkpointer(str(tmp_path), every_steps=1, keep=3,
                                  meta={"identity": config_lib.identity(config)})
  with pytest.raises(checkpoint.CheckpointError, match="model.depth=18; this run asks for "
                                                       "model.depth=50"):
    other.restore_latest(checkpoint.abstract(state), to_continue=False)
  other.close()


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


def test_a_failed_save_names_the_operating_system_s_reason_wherever_it_lies(tmp_path):
  ckpt = checkpoint.Checkpointer(str(tmp_path / "ckpt"), every_steps=10, keep=1, meta={})
  buried = ValueError('OUT_OF_RANGE: Error writing "a0/0.0" in OCDBT database at local file '
                      '"x": Failed to write 14648 bytes to file 11: File too large '
                      "[os_error_code='27']")
  try:
    try:
      raise OSError(28, "No space left on device")
    except OSError as e:
      raise ValueError("Error opening \"zarr\" driver: CANCELLED") from e
  except ValueError as e:
    chained = e
  for error, reason in ((buried, "File too large (errno 27)"),
                        (chained, "No space left on device (errno 28)"),
                        (ValueError("no code at all"), "ValueError: no code at all")):
    message = str(ckpt._save_error(3, error))
    assert f"could not save checkpoint 3 in {tmp_path / 'ckpt'}: {reason};" in message, message
  # An error that lost the OS's reason: the room the writes had says what most likely failed.
  lost = ValueError('Error opening "zarr" driver: Error reading ".zarray"')
  limited = lambda which: (65536, resource.RLIM_INFINITY) if which == resource.RLIMIT_FSIZE \
      else resource.getrlimit(which)
  full = os.statvfs(tmp_path)
  with mock.patch.object(checkpoint.resource, "getrlimit", limited):
    message = str(ckpt._save_error(3, lost))
  assert ('ValueError: Error opening "zarr" driver: Error reading ".zarray" (most likely File '
          "too large (errno 27): this process may write files of 65536 bytes at most);") \
      in message, message
  nearly_full = mock.Mock(f_bavail=3, f_frsize=full.f_frsize)
  with mock.patch.object(checkpoint.os, "statvfs", lambda path: nearly_full):
    message = str(ckpt._save_error(3, lost))
  assert (f"(most likely No space left on device (errno 28): {3 * full.f_frsize} bytes are "
          "free there);") in message, message
  ckpt.close()
