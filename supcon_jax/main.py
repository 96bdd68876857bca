"""Command line: `python -m supcon_jax.main --config=configs/X.py --workdir=DIR`.

Any config field can be overridden with `--config.<field>=<value>`; a misspelt field is
an error. Only flag parsing lives here; the work is `experiment.train_and_evaluate`.
"""

from __future__ import annotations

import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from supcon_jax import checkpoint, config as config_lib, experiment, train

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Checkpoints, metrics.jsonl, TensorBoard events and "
                    "results.json go here (local path or gs://). A run resumes from it.")
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() first: one process "
                  "per host on a TPU pod slice or a GPU cluster (it reads the cluster from the "
                  "environment).")
flags.DEFINE_bool("dry_run", False, "Check and print the resolved config, then exit.")
config_flags.DEFINE_config_file("config", None, "A config file with get_config().",
                                 lock_config=True)
flags.mark_flags_as_required(["config", "workdir"])

# Errors caused by the user's input or environment: one line, exit code 1, no traceback.
_USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, PermissionError,
                checkpoint.CheckpointError, train.NonFiniteError)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  config = FLAGS.config
  try:
    config_lib.validate(config)
    if FLAGS.dry_run:
      print(config)
      print(f"workdir: {FLAGS.workdir}")
      return
    if FLAGS.distributed:
      jax.distributed.initialize()
    logging.info("JAX %s, %d processes, devices: %s", jax.__version__, jax.process_count(),
                 jax.devices())
    experiment.train_and_evaluate(config, FLAGS.workdir)
  except train.Preempted as e:
    logging.warning("%s", e)  # exit 0: the scheduler restarts the job, which resumes
  except _USER_ERRORS as e:
    logging.error("%s: %s", type(e).__name__, e)
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  app.run(main)
