"""Reliability with two processes and with a full disk: SIGTERM to one of two cooperating
processes leaves one checkpoint both resume from, and a save that cannot be written stops the
run in one line with the last checkpoint intact.

The runs are real processes of the trainer (tests/runs.py).
"""

import re
import shutil
import signal
from pathlib import Path

import jax
import numpy as np

from tests import runs
from tests.runs import STEPS


def test_two_processes_match_one_share_checkpoints_and_stop_together(shared, reference,
                                                                     tmp_path):
  # Resume the one-process run's step 3 (on two devices) with two processes of one each.
  start = 3
  shutil.copytree(Path(reference) / "checkpoints" / str(start),
                  tmp_path / "checkpoints" / str(start))
  procs = runs.two_processes(shared, tmp_path)
  runs.wait_for_step(procs[0], tmp_path, start + 2, [])
  procs[1].send_signal(signal.SIGTERM)  # only the second process is told
  results = [runs.finish(p) for p in procs]
  for rc, log in results:
    assert rc == 0, log
  assert "2 processes" in results[0][1] and f"restored checkpoint {start} " in results[0][1]
  stopped = {int(re.search(r"preempted at step (\d+)", log).group(1)) for _, log in results}
  assert len(stopped) == 1, stopped  # both stopped after the same step ...
  stopped = stopped.pop()
  assert start + 2 <= stopped < STEPS and runs.steps(tmp_path)[-1] == stopped
  assert int(runs.load(tmp_path, stopped)["step"]) == stopped  # ... with one complete checkpoint
  results = [runs.finish(p) for p in runs.two_processes(shared, tmp_path)]
  for rc, log in results:
    assert rc == 0 and f"restored checkpoint {stopped} " in log, log
  rows, ref_rows = runs.losses(tmp_path), runs.losses(reference)
  assert sorted(rows) == list(range(start + 1, STEPS + 1))
  np.testing.assert_allclose([rows[s]["loss"] for s in rows],
                             [ref_rows[s]["loss"] for s in rows], rtol=1e-5)
  # The two-process checkpoint, read back by this one process. Two processes sum gradients
  # and statistics in another order than one: after 7 steps the parameters agree to ~1e-3.
  mine, ref = runs.load(tmp_path, STEPS), runs.load(reference, STEPS)
  assert int(mine["step"]) == STEPS
  for a, b in zip(jax.tree.leaves(mine["params"]), jax.tree.leaves(ref["params"])):
    np.testing.assert_allclose(a, b, rtol=5e-3, atol=1e-4)


def test_a_full_disk_stops_the_run_in_one_line_and_the_last_checkpoint_restores(shared, reference,
                                                                              tmp_path):
  start = STEPS // 2
  shutil.copytree(Path(reference) / "checkpoints" / str(start),
                  tmp_path / "checkpoints" / str(start))
  # Files may grow to 64 KiB: the logs and metrics fit, a checkpoint's parameters do not.
  rc, log = runs.finish(runs.start(shared, tmp_path, max_file_bytes=64 * 1024))
  # orbax's writers log their own tracebacks as they fail; the run ends with one line.
  assert rc == 1, log
  last = log.strip().splitlines()[-1]
  assert [l for l in log.splitlines() if l.startswith("error: ")] == [last], log
  for name in (f"could not save checkpoint {start + 1} in {tmp_path / 'checkpoints'}",
               "File too large (errno 27)", f"the newest complete checkpoint is {start}"):
    assert name in last, last
  assert runs.steps(tmp_path) == [start]
  rc, log = runs.run(shared, tmp_path)  # space again: the same command resumes
  assert rc == 0 and f"restored checkpoint {start} " in log, log
  mine, ref = runs.load(tmp_path, STEPS), runs.load(reference, STEPS)
  for a, b in zip(jax.tree.leaves(mine), jax.tree.leaves(ref)):
    np.testing.assert_array_equal(a, b)
