"""Command line: `python -m supcon_jax.main --config=configs/X.py --workdir=DIR`.

Any config field can be overridden with `--config.<field>=<value>`; a misspelt field is
an error. Only flag parsing lives here; the work is `experiment.train_and_evaluate`, and
what reaches the console (short lines; every record in `<workdir>/log.txt`) is console.py's.
"""

from __future__ import annotations

import logging as std_logging
import os
import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from supcon_jax import checkpoint, console, experiment, train, validation
from supcon_jax import config as config_lib

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Checkpoints, metrics.jsonl, TensorBoard events and "
                    "results.json go here (local path or gs://). A run resumes from it.")
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() first: one process "
                  "per host on a TPU pod slice or a GPU cluster (it reads the cluster from the "
                  "environment).")
flags.DEFINE_string("coordinator_address", None, "With --distributed: host:port of process 0, "
                    "for a cluster JAX does not detect (also read from JAX_COORDINATOR_ADDRESS).")
flags.DEFINE_integer("num_processes", None, "With --distributed: the number of processes.")
flags.DEFINE_integer("process_id", None, "With --distributed: this process's index.")
flags.DEFINE_bool("dry_run", False, "Check the resolved config as a run checks it at start-up "
                  "(without --distributed, its batches against this machine's devices too), "
                  "print it, then exit.")
flags.DEFINE_bool("verbose", False, "Every log record of every library on the console, in "
                  "absl's format (they always go to <workdir>/log.txt).")
config_flags.DEFINE_config_file("config", None, "A config file with get_config().",
                                 lock_config=True)
flags.mark_flags_as_required(["config", "workdir"])

# Errors caused by the user's input or environment: one line, exit code 1, no traceback.
_USER_ERRORS = (ValueError, OSError, checkpoint.CheckpointError, train.NonFiniteError)


def main(argv: list[str]) -> None:
  """Validates the config, starts the processes' runtime, and runs the experiment."""
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  console.setup(FLAGS.verbose)
  config = FLAGS.config
  try:
    experiment.validate(config)
    if FLAGS.dry_run:
      # What the run checks before it starts, but the devices of a cluster it has not joined.
      if not FLAGS.distributed:
        validation.check_devices(config, jax.device_count())
      print(config)
      print(f"workdir: {FLAGS.workdir}")
      return
    if FLAGS.distributed:
      jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes,
                                 FLAGS.process_id)
    console.start(FLAGS.workdir, jax.process_index(), verbose=FLAGS.verbose,
                  tensorflow=config.tensorboard or config.data.source != "arrays")
    logging.info("%s", console.config_diff(config, config_lib.base_config()))
    processes, devices = jax.process_count(), jax.device_count()
    logging.info("JAX %s, %d process%s, %d %s device%s", jax.__version__, processes,
                 "" if processes == 1 else "es", devices, jax.devices()[0].platform,
                 "" if devices == 1 else "s")
    experiment.train_and_evaluate(config, FLAGS.workdir)
  except train.Preempted as e:
    logging.warning("%s", e)
    if e.signal == "SIGINT":  # the shell's convention for a run ended by Ctrl-C
      sys.exit(130)
    # SIGTERM: exit 0, so the scheduler restarts the job, which resumes
  except KeyboardInterrupt:  # a second Ctrl-C, or one outside a training loop
    _fail("interrupted (Ctrl-C): nothing saved since the last checkpoint", code=130)
  except _USER_ERRORS as e:
    # For log.txt; the console gets _fail's line.
    logging.error("%s: %s", type(e).__name__, e, extra={"console": False})
    _fail(str(e))


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with a bad flag, config file or `--config.` override in one line."""
  try:
    return FLAGS(argv)
  except Exception as e:  # a config file's code can raise anything
    in_file = console.config_file_error(e)
    if in_file:
      _fail(in_file)
    if isinstance(e, flags.Error):
      _fail(str(e))
    if not isinstance(e, (AttributeError, KeyError, TypeError, ValueError, OSError)):
      raise
    # ml_collections reports an unknown field as a KeyError (with a did-you-mean hint)
    # wrapped in an AttributeError.
    while isinstance(e, AttributeError) and isinstance(e.__context__, KeyError):
      e = e.__context__
    text = e.args[0] if isinstance(e, KeyError) and e.args else e
    _fail(f"bad --config: {text}")


def _fail(message: str, code: int = 1) -> None:
  """One line on stderr, exit code `code`: the message of a user error, not a traceback.

  It is the last line: after a failed save, orbax's background writers are still printing
  their own tracebacks, so they are silenced first and the process ends at once (which also
  drops the records console.py holds back: a run refused at start-up writes no log.txt).
  """
  sys.stdout.flush()
  std_logging.disable(std_logging.CRITICAL)
  # Never closed: the process ends below, and late writers must find an open file.
  stderr, sys.stderr = sys.stderr, open(os.devnull, "w", encoding="utf-8")
  stderr.flush()
  # One write (atomic on a pipe), on a line of its own whatever was printed before it.
  os.write(stderr.fileno(), f"\nerror: {' '.join(str(message).split())}\n".encode())
  os._exit(code)


def run() -> None:
  """The `supcon-train` console script: `python -m supcon_jax.main` with its flags."""
  app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
  run()
