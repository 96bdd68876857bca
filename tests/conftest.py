"""Eight simulated CPU devices for every test, set before JAX initialises its backend, and
the runs several test files read (built once per session, shared by pytest-xdist workers).

XLA's CPU backend also compiles without LLVM's optimisations here: the tests' programs are
tiny, so compiling dominates their time, and the optimisation level changes no semantics.
For the same reason every test and every process it starts shares one persistent
compilation cache. Subprocesses inherit all of it (those that want another device count
drop that flag and keep the rest).
"""

import json
import os
import pathlib
import tempfile

import pytest

from tests.shared import build_once

# Before anything imports JAX (none of the imports above does).
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0"
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), f"supcon_jax_tests_{os.getuid()}"))
# Every program, however quick to compile: the tests start many processes that compile the
# same small programs (initialisation, evaluation) again.
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


@pytest.fixture(scope="session")
def tiny_runs(tmp_path_factory) -> tuple[pathlib.Path, dict]:
  """One tiny run of every method, trained once for the whole test session and shared by
  the files that only read it (experiment outputs, load_encoder, robustness, transfer):
  digits at 8x8, 4 steps with checkpoints at 2 and 4, stage all, scored on two corruptions
  at two severities. (workdir, results)."""
  from supcon_jax import experiment  # pylint: disable=g-import-not-at-top
  from tests.test_experiment import tiny_config  # pylint: disable=g-import-not-at-top

  def build(root):
    config = tiny_config("supcon,simclr,ce")
    config.epochs = 4 / 22
    config.robustness.update(enabled=True, corruptions=("gaussian_noise", "contrast"),
                             severities=(1, 5))
    experiment.train_and_evaluate(config, str(root))
    (root / "done").write_text("")

  root = build_once(tmp_path_factory, "tiny_runs", build)
  return root, json.loads((root / "results.json").read_text())


@pytest.fixture(scope="session")
def shared(tmp_path_factory) -> pathlib.Path:
  """The directory of the reliability tests' config file (tests/runs.py)."""
  from tests import runs  # pylint: disable=g-import-not-at-top

  def build(d):
    d.mkdir(parents=True, exist_ok=True)
    (d / "tiny.py").write_text(runs.CONFIG)
    (d / "done").write_text("")

  return build_once(tmp_path_factory, "reliability_config", build)


@pytest.fixture(scope="session")
def reference(shared, tmp_path_factory) -> pathlib.Path:
  """An uninterrupted run of the reliability tests' config, keeping every checkpoint."""
  from tests import runs  # pylint: disable=g-import-not-at-top

  def build(workdir):
    rc, log = runs.run(shared, workdir)
    assert rc == 0, log
    assert runs.steps(workdir) == list(range(1, runs.STEPS + 1))
    (workdir / "done").write_text("")

  return build_once(tmp_path_factory, "reliability_reference", build)
