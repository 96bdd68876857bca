"""What a run prints for people, and the full log it keeps in `<workdir>/log.txt`.

The console gets short lines: the config's differences from `config.base_config()`, the
training loop's progress lines, evaluations, this package's messages, and the warnings and
errors of libraries (less the routine ones, see `_ROUTINE`). `log.txt` gets every record of
every logger, in absl's format, appended run after run; `--verbose` also puts those on the
console, in place of the short lines.

A record steers itself through logging's `extra`:
  console=False   log.txt only (the progress lines between those the console shows);
  underway=True   the run is past its start-up checks (its training loop starts): log.txt
                  opens and receives every record since the start. A run refused at start-up
                  (main._fail ends the process without flushing) leaves its workdir as it was.
A run that ends without training (a finished one, rerun) writes its records as it exits.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys
import textwrap
import traceback
from collections.abc import Mapping
from typing import Any

from absl import logging as absl_logging

from supcon_jax import tf_setup

_PACKAGE = os.path.dirname(os.path.abspath(__file__))
# Libraries whose warnings are routine chatter, shown only from ERROR up: orbax warns on
# every fresh checkpoint directory ("Metadata file does not exist", ...).
_ROUTINE = ("orbax",)
_WIDTH = 100  # of the config lines


def setup(verbose: bool) -> None:
  """Routes log records: short lines on the console, or absl's full records if `verbose`."""
  root = logging.getLogger()
  if root.level == logging.NOTSET or root.level > logging.INFO:  # log.txt keeps INFO
    root.setLevel(logging.INFO)
  root.addHandler(_UntilUnderway())  # every record, for the log.txt that `start` names
  if not verbose:
    # TensorFlow's C++ logs bypass Python's logging (and log.txt): below warnings, hidden.
    tf_setup.quiet()
    # Short lines in place of absl's handler (app.run put it on the root logger), which
    # prints every record in full.
    root.removeHandler(absl_logging.get_absl_handler())
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_for_people)
    handler.setFormatter(_Short())
    root.addHandler(handler)
  logging.info("---- %s", " ".join(sys.argv), extra={"console": False})  # a run's first line


def start(workdir: str, process: int, *, verbose: bool, tensorflow: bool) -> None:
  """Appends every record since `setup` to `<workdir>/log.txt` (`log.<process>.txt` for
  processes > 0), once the run is under way.

  Only local workdirs: a gs:// object cannot be appended to. If the run will use TensorFlow
  (`tensorflow`), it is started here, so that what it prints while loading goes to the log
  now rather than into the middle of the run's lines (tf_setup).
  """
  root = logging.getLogger()
  held = next(h for h in root.handlers if isinstance(h, _UntilUnderway))
  if "://" in workdir:
    root.removeHandler(held)
    logging.info("no log.txt in %s (not a local directory): --verbose shows every record",
                 workdir)
  else:
    held.setTarget(_LogFile(os.path.join(workdir, "log.txt" if process == 0
                                         else f"log.{process}.txt")))
  if tensorflow:
    try:
      tf_setup.tensorflow()
    except ImportError:  # the run then writes metrics.jsonl only (metrics.Writer says so)
      pass


def config_diff(config: Any, base: Any) -> str:
  """`config: a=1 b.c=x ...`: the fields of `config` whose values differ from `base`'s."""
  mine, theirs = _flat(config.to_dict()), _flat(base.to_dict())
  fields = [f"{k}={_plain(v)}" for k, v in mine.items() if k not in theirs or theirs[k] != v]
  return textwrap.fill(" ".join(fields) or "the defaults", _WIDTH, initial_indent="config: ",
                       subsequent_indent="  ", break_long_words=False, break_on_hyphens=False)


def config_file_error(error: BaseException) -> str | None:
  """`FILE line N: message` for an error in a config file's code, else None.

  A syntax error names its own file and line; any other error is placed at the deepest
  line of a config module in its traceback, or in the tracebacks it wraps (ml_collections
  re-raises a get_config() error as a new one with the first as its context).
  """
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, SyntaxError) and error.filename:
      return f"{error.filename} line {error.lineno}: {error.msg}"
    frames = [f for f, _ in traceback.walk_tb(error.__traceback__) if _is_config(f)]
    if frames:
      text = error.args[0] if isinstance(error, KeyError) and error.args else error  # unquoted
      return (f"{frames[-1].f_code.co_filename} line {frames[-1].f_lineno}: "
              f"{type(error).__name__}: {text}")
    error = error.__cause__ or error.__context__
  return None


def _is_config(frame: Any) -> bool:
  # Both loaders of config files name the module "<name>_config": ml_collections'
  # config_flags ("config_config") and config.load_config_file.
  return frame.f_globals.get("__name__", "").endswith("_config")


def _flat(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  out = {}
  for key, value in tree.items():
    if isinstance(value, Mapping):
      out.update(_flat(value, f"{prefix}{key}."))
    else:
      out[prefix + key] = value
  return out


def _plain(value: Any) -> str:
  if isinstance(value, (tuple, list)):
    return ",".join(map(_plain, value))
  if isinstance(value, float):
    return f"{value:g}"
  return str(value)


def _library(record: logging.LogRecord) -> str:
  """The package (or file) that logged `record`: absl's logger carries orbax's and TF's."""
  parts = record.pathname.split(os.sep)
  for marker in ("site-packages", "dist-packages"):
    if marker in parts[:-1]:
      return os.path.splitext(parts[parts.index(marker) + 1])[0]
  if record.name in ("root", "absl"):
    return os.path.basename(record.pathname)
  return record.name.split(".")[0]


def _ours(record: logging.LogRecord) -> bool:
  return record.pathname.startswith(_PACKAGE + os.sep)


def _for_people(record: logging.LogRecord) -> bool:
  """Whether the console shows `record`: this package's from INFO, libraries' from WARNING."""
  if not getattr(record, "console", True):
    return False
  if _ours(record):
    return record.levelno >= logging.INFO
  routine = _library(record) in _ROUTINE
  return record.levelno >= (logging.ERROR if routine else logging.WARNING)


class _Short(logging.Formatter):
  """The message alone; warnings and errors say so, and name the library they come from."""

  def format(self, record: logging.LogRecord) -> str:
    text = record.getMessage()
    if record.levelno < logging.WARNING:
      return text
    where = "" if _ours(record) else f" ({_library(record)})"
    return f"{record.levelname.lower()}{where}: {text}"


class _LogFile(logging.FileHandler):
  """log.txt in absl's format, opened at its first record; it stops, saying so, if it fails."""

  def __init__(self, path: str):
    super().__init__(path, mode="a", encoding="utf-8", delay=True)
    self.setFormatter(absl_logging.PythonFormatter())
    self._failed = False

  def _open(self):
    os.makedirs(os.path.dirname(self.baseFilename), exist_ok=True)
    return super()._open()

  def emit(self, record: logging.LogRecord) -> None:
    if not self._failed:
      super().emit(record)

  def handleError(self, record: logging.LogRecord) -> None:
    # A full disk must not fill the console with logging's tracebacks, once per record.
    self._failed = True
    sys.stderr.write(f"warning: cannot write {self.baseFilename} ({sys.exc_info()[1]}); "
                     "the log goes on only on the console\n")


class _UntilUnderway(logging.handlers.MemoryHandler):
  """Holds the records until one says the run is under way, then passes each on at once
  to its target (none yet: nothing passes)."""

  def __init__(self):
    # The capacity only bounds the memory of a very long start-up.
    super().__init__(capacity=100_000, flushLevel=logging.CRITICAL + 1, flushOnClose=True)
    self._underway = False

  def shouldFlush(self, record: logging.LogRecord) -> bool:
    self._underway = self._underway or getattr(record, "underway", False)
    return self._underway or super().shouldFlush(record)
