"""Reliability with two processes and with a full disk: SIGTERM to one of two cooperating
processes leaves one checkpoint both resume from, and a save that cannot be written stops the
run in one line with the last checkpoint intact.

The runs are real processes of the trainer (tests/cli_runs.py).
"""

import json
import math
import re
import shutil
import signal
from pathlib import Path

import jax
import numpy as np

from tests import cli_runs
from tests.cli_runs import STEPS
from tests.rounding import EPS, resnet18_sums, rounding

# The rounding model (tests/rounding.py) of cli_runs.CONFIG's step: ResNet-18/8 on 128 views
# (64 digits x 2) of 8 x 8, BatchNorm over all of them, the logits' 128 products and 127-row
# log-sum-exps; the gradient's sums.
FORWARD = resnet18_sums(0.125, 8, 128) + [128, 128]
BACKWARD = resnet18_sums(0.125, 8, 128, backward=True)
# ReLU flips (tests/rounding.py's docstring): a pre-activation of unit scale is off by at most
# rounding(FORWARD) = 6.7e-4 and lies that close to 0 with probability 0.8 x that (a unit
# normal's density at 0 is 0.4), so a channel of P positions flips Poisson(P x 5.4e-4) of its
# ReLUs' gradients, each adding or dropping one of the P terms of its weight gradient's row:
# sqrt(F / P) of it for F flips (terms of either sign). The fewest positions are 128 (the last
# stage's 1 x 1 maps and the head's hidden units: one per view), in 4 x 64 + 64 channels with
# 0.07 flips each: 7 or more in any of them has probability 320 x 0.07**7 / 7! < 1e-9 a step.
# Larger maps flip more but weigh less: at the same odds, at most 10 of 512, 14 of 2048 and
# 25 of the first stage's 8192 positions (14%, 8%, 6%).
FLIPS = math.sqrt(7 / 128)
# One step's update from one state: the gradient's rounding plus the flips, doubled by LARS's
# trust ratio (the gradient's direction times a ratio of norms, as in test_train): 0.47 of the
# step's own update, per leaf. The faults this test is for move it by about its own size:
# on a copy of the trainer, the second process reading the first one's rows, or the update
# taking the first process's gradient alone (not summed with the second's), moved nearly every
# leaf's step 4 by more than STEP_RTOL, the median leaf by 2 x and the worst by 5 x it; the
# wrong rows also moved the BatchNorm statistics by 60 x their bound (median layer).
STEP_RTOL = 2 * (rounding(FORWARD + BACKWARD) + FLIPS)
BN_MOMENTUM = 0.9  # the weight of the old running statistics (models/resnet.py's _norm)


def test_two_processes_match_one_share_checkpoints_and_stop_together(config_dir, reference_run,
                                                                     tmp_path):
  # Resume the one-process run's step 3 (on two devices) with two processes of one each.
  start = 3
  shutil.copytree(Path(reference_run) / "checkpoints" / str(start),
                  tmp_path / "checkpoints" / str(start))
  procs = cli_runs.two_processes(config_dir, tmp_path)
  cli_runs.wait_for_step(procs[0], tmp_path, start + 2, [])
  procs[1].send_signal(signal.SIGTERM)  # only the second process is told
  results = [cli_runs.finish(p) for p in procs]
  for rc, log in results:
    assert rc == 0, log
  assert "2 processes" in results[0][1] and f"restored checkpoint {start} " in results[0][1]
  stopped = {int(re.search(r"preempted at step (\d+)", log).group(1)) for _, log in results}
  assert len(stopped) == 1, stopped  # both stopped after the same step ...
  stopped = stopped.pop()
  assert start + 2 <= stopped < STEPS and cli_runs.steps(tmp_path)[-1] == stopped
  # ... with one complete checkpoint
  assert int(cli_runs.load(tmp_path, stopped)["step"]) == stopped
  results = [cli_runs.finish(p) for p in cli_runs.two_processes(config_dir, tmp_path)]
  for rc, log in results:
    assert rc == 0 and f"restored checkpoint {stopped} " in log, log
  rows, ref_rows = cli_runs.losses(tmp_path), cli_runs.losses(reference_run)
  assert sorted(rows) == list(range(start + 1, STEPS + 1))
  # The schedule is the host's function of the step: exactly the one run's.
  assert [rows[s]["lr"] for s in rows] == [ref_rows[s]["lr"] for s in rows]
  config = json.loads((Path(reference_run) / "config.json").read_text())
  mine = {k: cli_runs.load(tmp_path, k) for k in range(start, STEPS + 1)}
  ref = {k: cli_runs.load(reference_run, k) for k in range(start, STEPS + 1)}
  assert int(mine[STEPS]["step"]) == STEPS
  # Each step that starts from one state, bitwise, in both runs (the first: step 3 is a copy).
  # Once the runs differ, ReLU flips compound (tests/rounding.py's `trained`: 3 x STEP_RTOL
  # after two steps, more than the update itself), so no rounding bound is left to test the
  # steps after, and they are not compared. Both runs split the batch over 2 devices alike and
  # a sum of the 2 devices' partial sums is the same in either order, so they may stay equal
  # to the end (they did, bitwise, on the machine these bounds were checked on), but the bounds
# do not rely on it.
  compared = []
  for k in range(start + 1, STEPS + 1):
    if not _equal(mine[k - 1], ref[k - 1]):
      break
    # The loss is the forward pass's (ReLU is continuous): the embeddings are unit vectors
    # off by rounding(FORWARD), each logit z_i.z_j / t by twice that / t, a per-anchor loss (a
    # log-sum-exp less a mean of logits) by twice the logits' (as test_train): 0.027, 0.5% of
    # the loss. Too loose to see the wrong data (0.015 at step 4): the update sees that.
    np.testing.assert_allclose(rows[k]["loss"], ref_rows[k]["loss"], rtol=0,
                               atol=4 * rounding(FORWARD) / config["loss"]["temperature"],
                               err_msg=f"step {k}")
    _assert_one_step_alike(mine[k], ref[k], ref[k - 1], config["optim"]["momentum"])
    compared.append(k)
  assert compared[:1] == [start + 1], compared


def _equal(a, b) -> bool:
  return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _assert_one_step_alike(got, want, before, momentum):
  """One step from the state `before` (both runs') gave `got` and `want`: their parameters
  within STEP_RTOL of the step's own update, their BatchNorm statistics within rounding of the
  batch's; the step, counters and schedule position equal."""
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    if not np.issubdtype(w.dtype, np.floating):
      np.testing.assert_array_equal(g, w)
  trace = lambda state: next(s["trace"] for s in state["opt_state"]
                             if isinstance(s, dict) and "trace" in s)

  def params(path, g, w, old, new):
    # LARS's momentum buffer holds the update: new = momentum x old (both runs') + the step's
    # own. From one start the parameters differ by the own update's difference, and by each
    # run's rounding of the buffer and of the parameters plus it (EPS / 2 of each).
    own = new - momentum * old.astype(np.float64)
    atol = STEP_RTOL * np.abs(own).max() + 2 * EPS * np.abs(w).max()
    np.testing.assert_allclose(g, w, rtol=0, atol=atol,
                               err_msg=f"{jax.tree_util.keystr(path)} at step {want['step']}")

  jax.tree_util.tree_map_with_path(params, got["params"], want["params"], trace(before),
                                   trace(want))

  def statistics(g, w, s):
    # new = BN_MOMENTUM x old + (1 - BN_MOMENTUM) x the batch's mean and variance, which are
    # forward sums: off by rounding(FORWARD) of the channel's E[x^2] (its square root for the
    # mean; mean(x^2) - mean(x)^2 for the variance: at most 3 times).
    batch = {n: (w[n] - BN_MOMENTUM * s[n].astype(np.float64)) / (1 - BN_MOMENTUM)
             for n in ("mean", "var")}
    square = np.maximum(batch["var"] + batch["mean"] ** 2, 0)
    off = (1 - BN_MOMENTUM) * rounding(FORWARD)
    for n, atol in (("mean", off * np.sqrt(square)), ("var", 3 * off * square)):
      atol = atol + 2 * EPS * np.abs(w[n])  # per channel: assert_allclose takes one number
      gap = np.abs(g[n] - w[n].astype(np.float64))
      assert (gap <= atol).all(), f"{n}: {gap.max():.3g} apart, {(gap / atol).max():.3g} x bound"

  is_layer = lambda x: isinstance(x, dict) and "mean" in x
  jax.tree.map(statistics, got["batch_stats"], want["batch_stats"], before["batch_stats"],
               is_leaf=is_layer)


def test_a_full_disk_stops_the_run_in_one_line_and_the_last_checkpoint_restores(
    config_dir, reference_run, tmp_path):
  start = STEPS // 2
  shutil.copytree(Path(reference_run) / "checkpoints" / str(start),
                  tmp_path / "checkpoints" / str(start))
  # Files may grow to 64 KiB: the logs and metrics fit, a checkpoint's parameters do not.
  rc, log = cli_runs.finish(cli_runs.start(config_dir, tmp_path, max_file_bytes=64 * 1024))
  # orbax's writers log their own tracebacks as they fail; the run ends with one line.
  assert rc == 1, log
  last = log.strip().splitlines()[-1]
  assert [l for l in log.splitlines() if l.startswith("error: ")] == [last], log
  for name in (f"could not save checkpoint {start + 1} in {tmp_path / 'checkpoints'}",
               "File too large (errno 27)", f"the newest complete checkpoint is {start}"):
    assert name in last, last
  assert cli_runs.steps(tmp_path) == [start]
  rc, log = cli_runs.run(config_dir, tmp_path)  # space again: the same command resumes
  assert rc == 0 and f"restored checkpoint {start} " in log, log
  # Bitwise, by construction: one process on the same 2 devices runs the same compiled step on
  # the restored bits (the checkpoint holds the whole state in float32, restored with the
  # shardings it was saved from: checkpoint.abstract), and a step's batch and key are
  # functions of its number (train.py's docstring): every sum runs in the one run's order.
  mine, ref = cli_runs.load(tmp_path, STEPS), cli_runs.load(reference_run, STEPS)
  for a, b in zip(jax.tree.leaves(mine), jax.tree.leaves(ref)):
    np.testing.assert_array_equal(a, b)
