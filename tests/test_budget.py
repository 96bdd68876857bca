"""The wall-time budget: epochs cut to what fits, decided once per workdir."""

import json
import time

import ml_collections
import pytest

from supcon_jax import budget


def test_epochs_that_fit_rounds_down_and_caps():
  # 100 steps per epoch at 0.01 s = 1 s per epoch; 12.5 s left -> 12 whole epochs.
  assert budget.epochs_that_fit(max_epochs=50, seconds_left=12.5, step_seconds=0.01,
                                steps_per_epoch=100) == 12.0
  assert budget.epochs_that_fit(max_epochs=5, seconds_left=12.5, step_seconds=0.01,
                                steps_per_epoch=100) == 5.0
  with pytest.raises(ValueError, match="time_budget_s"):
    budget.epochs_that_fit(max_epochs=5, seconds_left=0.5, step_seconds=0.01, steps_per_epoch=100)


def test_plan_is_decided_once_and_read_back(tmp_path):
  config = ml_collections.ConfigDict({"epochs": 1000.0, "time_budget_s": 100.0,
                                      "time_reserve_s": 20.0})
  started = time.time()
  # compile 10 s, 0.05 s per step, 20 steps per epoch: (100 - 10 - 20) / 1 s = 70 epochs
  epochs = budget.plan_epochs(config, str(tmp_path), started=started,
                              probe=lambda: (10.0, 0.05), steps_per_epoch=20)
  assert epochs in (69.0, 70.0)  # a second may pass between `started` and the plan
  assert json.loads((tmp_path / "budget.json").read_text())["epochs"] == epochs

  def no_probe():
    raise AssertionError("a resumed run must not measure again")

  assert budget.plan_epochs(config, str(tmp_path), started=started - 1e6, probe=no_probe,
                            steps_per_epoch=20) == epochs
