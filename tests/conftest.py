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

from tests.helpers import build_once, tiny_runs_config

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
def mesh():
  """The trainer's mesh over the eight simulated devices."""
  from supcon_jax import sharding  # after the environment above: it imports JAX
  return sharding.make_mesh()


@pytest.fixture(scope="session")
def tiny_runs(tmp_path_factory) -> tuple[pathlib.Path, dict]:
  """Tiny runs of supcon and ce (helpers.tiny_runs_config), trained once for the whole test
  session and shared by the files that only read them (experiment outputs, load_encoder,
  robustness, transfer). (workdir, results)."""
  from supcon_jax import experiment  # after the environment above: it imports JAX

  def build(root):
    experiment.train_and_evaluate(tiny_runs_config(), str(root))
    (root / "done").write_text("")

  root = build_once(tmp_path_factory, "tiny_runs", build)
  return root, json.loads((root / "results.json").read_text())


@pytest.fixture(scope="session")
def config_dir(tmp_path_factory) -> pathlib.Path:
  """The directory of the reliability tests' config file (tests/cli_runs.py)."""
  from tests import cli_runs  # after the environment above: it imports JAX

  def build(d):
    d.mkdir(parents=True, exist_ok=True)
    (d / "tiny.py").write_text(cli_runs.CONFIG)
    (d / "done").write_text("")

  return build_once(tmp_path_factory, "reliability_config", build)


@pytest.fixture(scope="session")
def reference_run(config_dir, tmp_path_factory) -> pathlib.Path:
  """An uninterrupted run of the reliability tests' config, keeping every checkpoint."""
  from tests import cli_runs

  def build(workdir):
    rc, log = cli_runs.run(config_dir, workdir)
    assert rc == 0, log
    assert cli_runs.steps(workdir) == list(range(1, cli_runs.STEPS + 1))
    (workdir / "done").write_text("")

  return build_once(tmp_path_factory, "reliability_reference", build)
