"""Directories the tests build once per test session and share, across pytest-xdist workers."""

import fcntl
import os
import pathlib
from typing import Callable


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
