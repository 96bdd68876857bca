"""The wall-time budget: epochs cut to what fits, decided once per workdir."""

import itertools
import json
import time

import jax.numpy as jnp
import ml_collections
import numpy as np
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
  # Steps twice as slow: half the epochs.
  slower = budget.plan_epochs(config, str(tmp_path / "slower"), started=started,
                              probe=lambda: (10.0, 0.1), steps_per_epoch=20)
  assert slower in (34.0, 35.0)


class _FakeClock:
  """time.time() that moves only when a step runs: 20 s to compile, `step_s` per step."""

  def __init__(self, step_s):
    self.now, self.step_s = 1000.0, step_s

  def time(self):
    return self.now

  def slowed(self, make_step):
    def make(*args, **kwargs):
      step, compiled = make_step(*args, **kwargs), []

      def run(*step_args):
        self.now += self.step_s if compiled else 20.0 + self.step_s
        compiled.append(True)
        return step(*step_args)
      return run
    return make


def test_the_probe_times_the_steps_after_its_warm_up(monkeypatch):
  clock = _FakeClock(step_s=0.3)
  monkeypatch.setattr(budget, "time", clock)
  step = clock.slowed(lambda: lambda state, batch, rng: (state, jnp.zeros(())))()
  compile_s, step_s = budget.measure_step_seconds(step, {"w": jnp.ones(2)},
                                                  itertools.repeat({}), None)
  assert compile_s == pytest.approx(20.0 + 3 * 0.3)  # the first of 3 warm-up steps compiles
  assert step_s == pytest.approx(0.3)


def test_budget_path_end_to_end_with_a_fake_clock(tmp_path, monkeypatch):
  from supcon_jax import experiment, train
  from tests.helpers import tiny_config
  clock = _FakeClock(step_s=2.0)
  monkeypatch.setattr(budget, "time", clock)
  monkeypatch.setattr(experiment, "time", clock)
  monkeypatch.setattr(train, "make_step", clock.slowed(train.make_step))
  config = tiny_config("supcon")
  config.stage = "pretrain"
  config.batch_size = 256  # 1,437 training digits: 5 steps of 10 s per epoch
  # A ceiling the budget cuts; low, so that a run that ignores the budget fails quickly.
  config.epochs = 8.0
  config.model.width = 0.0625
  config.augment.policy = "cropflip"
  config.time_budget_s, config.time_reserve_s = 140.0, 20.0
  config.log_every_steps = 1
  config.checkpoint_every_steps = 1000
  results = experiment.train_and_evaluate(config, str(tmp_path))
  plan = json.loads((tmp_path / "budget.json").read_text())
  # The probe: 3 warm-up steps, the first compiling (20 + 3 x 2 s), then 10 timed steps.
  assert plan["step_seconds"] == pytest.approx(2.0)
  assert plan["compile_seconds"] == pytest.approx(26.0)
  # Left for pre-training: 140 - 46 s spent probing - 26 s to compile again - 20 reserved.
  assert plan["seconds_left_for_pretraining"] == pytest.approx(48.0)
  assert plan["epochs"] == results["epochs"] == 4.0  # floor(48 / 10 s per epoch)
  assert results["encoder_steps"] == 20
  # The schedule is the run's, not the configured 8 epochs': the 10-epoch warm-up is
  # capped at 20% of the 20 steps, the rate peaks in the first half and ends near zero.
  lrs = [row["lr"] for row in map(json.loads, (tmp_path / "metrics.jsonl").open())]
  assert len(lrs) == 20 and int(np.argmax(lrs)) < 10 and lrs[-1] < 0.02 * max(lrs)
  # Decided once: a resume keeps the schedule its checkpoint records, with no new timing.
  (tmp_path / "budget.json").unlink()
  probes = []
  monkeypatch.setattr(budget, "measure_step_seconds", lambda *a, **k: probes.append(1))
  config.epochs = 10.0  # more would fit now, but this run's schedule stays
  assert experiment.train_and_evaluate(config, str(tmp_path))["epochs"] == 4.0
  assert not probes and not (tmp_path / "budget.json").exists()
