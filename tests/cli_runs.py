"""Real training runs for the reliability tests: `python -m supcon_jax.main` subprocesses on a
tiny config (digits at 8x8, ResNet-18 at width 1/8, 10 steps crossing two epoch boundaries)
on two simulated devices (one each for two processes), and what the tests read back.

The uninterrupted reference_run run is made once per test session for every file and worker
(conftest's `reference_run`); all runs share the tests' persistent compilation cache (conftest), so
only the first run of each program pays for compiling.
"""

import hashlib
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp

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
  # No TensorFlow to import, ~5 s less per process; the test that reads the events turns
  # them on.
  c.tensorboard = False
  return c
'''


def xla_flags(devices):
  """conftest's XLA flags with another simulated device count."""
  kept = [f for f in os.environ["XLA_FLAGS"].split() if "device_count" not in f]
  return " ".join(kept + [f"--xla_force_host_platform_device_count={devices}"])


def env(devices=2):
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3",
         "XLA_FLAGS": xla_flags(devices),
         "PYTHONPATH": str(ROOT)}
  env.pop("JAX_COORDINATOR_ADDRESS", None)
  return env


def start(config_dir, workdir, *overrides, devices=2, extra=(), max_file_bytes=None):
  args = [sys.executable, "-m", "supcon_jax.main", f"--config={config_dir / 'tiny.py'}",
          f"--workdir={workdir}", *overrides, *extra]

  def limit_files():  # as a full disk: writing past the limit fails with EFBIG
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # (its default is to kill the process)
    resource.setrlimit(resource.RLIMIT_FSIZE, (max_file_bytes, max_file_bytes))

  return subprocess.Popen(args, cwd=ROOT, env=env(devices), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True,
                          preexec_fn=limit_files if max_file_bytes else None)


def finish(proc, timeout=300):
  out, err = proc.communicate(timeout=timeout)
  return proc.returncode, out + err


def run(config_dir, workdir, *overrides):
  return finish(start(config_dir, workdir, *overrides))


def steps(workdir):
  """Finalised checkpoint steps (orbax renames a step's directory once it is complete)."""
  d = Path(workdir) / "checkpoints"
  return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.is_dir() else []


def load(workdir, step):
  """The saved train state as NumPy, read with orbax alone (not through the code under test)."""
  path = Path(workdir) / "checkpoints" / str(step) / "state"
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])  # whatever topology saved it
  with ocp.StandardCheckpointer() as c:
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                          dict(c.metadata(path).item_metadata))
    state = c.restore(path, target)
  return jax.tree.map(np.asarray, jax.device_get(state))


def losses(workdir):
  with open(Path(workdir) / "metrics.jsonl") as f:
    return {r["step"]: r for r in map(json.loads, f)}


def tensorboard_losses(logdir):
  """{step: loss} of every event file in `logdir`; AssertionError on a step seen twice."""
  from tensorboard.backend.event_processing import event_file_loader
  from tensorboard.util import tensor_util
  losses = {}
  for path in sorted(Path(logdir).glob("events.out.tfevents.*")):
    for event in event_file_loader.EventFileLoader(str(path)).Load():
      for value in event.summary.value:
        if value.tag == "loss":
          assert event.step not in losses, f"step {event.step} twice in {logdir}"
          losses[event.step] = float(tensor_util.make_ndarray(value.tensor))
  return losses


def tree_hash(path):
  h = hashlib.sha256()
  for p in sorted(Path(path).rglob("*")):
    h.update(str(p.relative_to(path)).encode())
    if p.is_file():
      h.update(p.read_bytes())
  return h.hexdigest()


def assert_user_error(rc, log, *names):
  """Exit code 1, no traceback, and a one-line `error:` naming every culprit."""
  assert rc == 1, log
  assert "Traceback" not in log, log
  lines = [l for l in log.splitlines() if l.startswith("error: ")]
  assert len(lines) == 1, log
  for name in names:
    assert str(name) in lines[0], lines[0]


def wait_for_step(proc, workdir, at_least, seen):
  """Polls until a finalised step >= at_least; records every listing in `seen`."""
  deadline = time.time() + 240
  while time.time() < deadline:
    found = steps(workdir)
    seen.append(found)
    if found and found[-1] >= at_least:
      return found[-1]
    assert proc.poll() is None, finish(proc)[1]
    time.sleep(0.02)
  proc.kill()
  raise AssertionError(f"no checkpoint >= {at_least} in time")


def free_port():
  """A TCP port nobody listens on, for a coordinator."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def two_processes(config_dir, workdir, *overrides):
  """Two cooperating processes of the trainer, one simulated device each."""
  port = free_port()
  return [start(config_dir, workdir, *overrides, devices=1,
                extra=("--distributed", f"--coordinator_address=127.0.0.1:{port}",
                       "--num_processes=2", f"--process_id={i}")) for i in range(2)]
