"""TensorFlow's start-up, in one place: the input pipelines, the TensorBoard writer and the
console all get TensorFlow from `tensorflow()`.

TensorFlow is only ever the host's reader (tf.data) and clu's event writer, so:
- it must not see the GPUs/TPUs, or it takes memory JAX needs;
- its oneDNN graph rewrites are off: they speed up no op of an input pipeline, and on CPUs
  without AVX-512 they print an `E0000 ... DT_UINT8 only on platforms with AVX-512` line
  that looks like an error (and, on every CPU, a notice while loading);
- what its C++ libraries print while loading goes to the log, not the console.
A leaf: it imports nothing of the package, and TensorFlow only when asked.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import tempfile
from types import ModuleType


def quiet() -> None:
  """Keeps TensorFlow's C++ log below warnings off the console (read when it loads)."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


_started: ModuleType | None = None


def tensorflow() -> ModuleType:
  """TensorFlow, started as the module docstring says (ImportError where not installed)."""
  global _started
  if _started is None:
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    tf = _import_capturing_stderr()
    for kind in ("GPU", "TPU"):
      try:
        tf.config.set_visible_devices([], kind)
      except RuntimeError:  # TensorFlow's runtime started before this module: too late.
        logging.warning("TensorFlow was initialised before supcon_jax and may hold %s memory",
                        kind)
    _started = tf
  return _started


def _import_capturing_stderr() -> ModuleType:
  """Imports TensorFlow, logging what its C++ libraries write to the process's stderr."""
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as captured:
    os.dup2(captured.fileno(), 2)  # the C++ libraries write to file descriptor 2 itself
    try:
      return importlib.import_module("tensorflow")
    finally:
      os.dup2(saved, 2)
      os.close(saved)
      captured.seek(0)
      printed = captured.read().decode(errors="replace").strip()
      if printed:
        logging.info("TensorFlow printed, loading:\n%s", printed, extra={"console": False})
