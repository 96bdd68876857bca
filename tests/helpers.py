"""What several test files share: the tiny config of the end-to-end runs, and directories
built once per test session for every pytest-xdist worker."""

import fcntl
import os
import pathlib
from collections.abc import Callable

from supcon_jax import config as config_lib


def data_config(**overrides):
  """The default `data` block with `overrides`."""
  c = config_lib.base_config().data
  c.update(overrides)
  return c


def tiny_config(method: str):
  """Digits at 8x8, ResNet-18 at width 1/8, batch 64: 22 steps per epoch on the 1,437
  training digits, 2 steps of pre-training and 2 of the linear stage."""
  c = config_lib.base_config()
  c.method = method
  c.data.source = "arrays"
  c.data.name = "digits"
  c.data.image_size = 8
  c.model.depth = 18
  c.model.width = 0.125
  c.batch_size = 64
  c.epochs = 2 / 22
  c.linear.batch_size = 64
  c.linear.epochs = 2 / 22
  c.linear.augment = "cropflip"
  c.eval_every_epochs = 0
  c.knn.num_train = 256
  c.log_every_steps = 1
  c.checkpoint_every_steps = 2
  c.embedding_plot = False
  return c


def tiny_runs_config(method: str = "supcon,ce"):
  """conftest's tiny runs: 4 steps with checkpoints at 2 and 4, stage all, scored on two
  corruptions at two severities. A contrastive method and the one with its own classifier:
  SimCLR differs from SupCon only in its loss's labels (test_config, test_momentum)."""
  c = tiny_config(method)
  c.epochs = 4 / 22
  c.robustness.update(enabled=True, corruptions=("gaussian_noise", "contrast"),
                      severities=(1, 5))
  return c


def build_once(tmp_path_factory, name: str, build: Callable[[pathlib.Path], None]
               ) -> pathlib.Path:
  """A directory that `build(path)` fills once per test session, for every test and every
  pytest-xdist worker (they share the run's id); `build` must write `<path>/done` last."""
  base = tmp_path_factory.getbasetemp()
  run_id = os.environ.get("PYTEST_XDIST_TESTRUNUID")
  path = base.parent / f"{name}_{run_id}" if run_id else base / name
  path.parent.mkdir(parents=True, exist_ok=True)
  with open(f"{path}.lock", "w", encoding="utf-8") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)  # one worker builds, the others wait for it
    if not (path / "done").exists():
      build(path)
  return path
