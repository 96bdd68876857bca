"""The sharded train step: 8 devices give the same run as 1 device, to float32 rounding.

The tolerances follow the rounding model of tests/rounding.py.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from supcon_jax import config as config_lib
from supcon_jax import methods, optim, sharding, train
from tests.rounding import (
  apart,
  assert_moved_alike,
  resnet18_sums,
  rounding,
  smooth_activations,
  trained,
)


def _tiny_config(method="supcon"):
  c = config_lib.base_config()
  c.method = method
  c.model.depth = 18
  c.model.width = 0.125
  c.augment.policy = "simaugment"
  c.optim.name = "lars"
  c.optim.base_lr = 0.5
  c.optim.warmup_epochs = 0
  c.batch_size = 16
  return c


def _run_steps(config, mesh, images, labels, num_steps=3):
  """(losses, gradient norms, the states from the initial one to the last) of `num_steps`."""
  method = methods.get(config.method)
  model = method.build_model(config, 10)
  tx, _ = optim.make_optimizer(config.optim, batch_size=config.batch_size, steps_per_epoch=10,
                               total_steps=10)
  rng = jax.random.PRNGKey(0)
  params, batch_stats = train.init_model(model, 0, images.shape[1:], mesh)
  state = train.create_state(params, batch_stats, tx, mesh)
  step = train.make_step(method.loss_fn(config, model, mesh), tx, mesh, donate=False)
  batch = sharding.to_global({"image": images, "label": labels}, mesh)
  losses, norms, states = [], [], [jax.device_get(state)]
  for _ in range(num_steps):
    state, m = step(state, batch, rng)
    values = m.compute()
    losses.append(float(values["loss"]))
    norms.append(float(values["grad_norm"]))
    states.append(jax.device_get(state))
  return losses, norms, states


@pytest.mark.parametrize("method", ["supcon"])  # ce: same step code, covered end to end
def test_eight_devices_match_one(method):
  assert jax.device_count() == 8
  config = _tiny_config(method)
  r = np.random.default_rng(0)
  images = r.integers(0, 256, (16, 16, 16, 3), dtype=np.uint8)
  labels = r.integers(0, 4, (16,)).astype(np.int32)
  with smooth_activations():
    loss1, norms, states1 = _run_steps(config, sharding.make_mesh(1), images, labels)
    loss8, _, states8 = _run_steps(config, sharding.make_mesh(8), images, labels)
  assert loss1[0] != loss1[-1]  # the parameters did move
  # Rounding (module docstring) of ResNet-18/8 on 32 views of 16 x 16, BN over all of them:
  # the forward pass and the logits' 128 products and 32-row log-sum-exps; a step adds the
  # gradient's sums. LARS's update is the gradient's direction times a trust ratio of norms:
  # twice a step's difference. After k steps the parameters differ by trained(update, k).
  forward = resnet18_sums(0.125, 16, 32) + [128, 32]
  update = 2 * rounding(forward + resnet18_sums(0.125, 16, 32, backward=True))
  for k, (a, b) in enumerate(zip(loss1, loss8)):
    # Step k's loss: the embeddings (unit vectors) differ by rounding(forward), each logit
    # z_i.z_j / t by twice that / t, a per-anchor loss (a log-sum-exp less a mean of them)
    # by twice the logits'; and the parameters it starts from, `apart` after k steps, move
    # it by at most |gradient| x that (first order).
    atol = (4 * rounding(forward) / config.loss.temperature
            + norms[k] * apart(states1[0].params, states1[k].params, update, k))
    np.testing.assert_allclose(b, a, rtol=0, atol=atol)
  # Parameters, BN's running averages and LARS's momentum after 3 steps, from one start.
  np.testing.assert_equal(jax.device_get(states8[0].params), jax.device_get(states1[0].params))
  assert_moved_alike(states8[-1], states1[-1], states1[0], trained(update, 3), steps=3)
  assert int(states8[-1].step) == 3


def test_nonfinite_step_is_dropped_and_counted():
  mesh = sharding.make_mesh(8)
  tx, _ = optim.make_optimizer(_tiny_config().optim, batch_size=8, steps_per_epoch=1,
                               total_steps=1)
  params = {"w": jnp.ones((3,))}

  def loss_fn(p, bs, batch, rng):
    return jnp.sum(p["w"] * batch["x"]), bs

  step = train.make_step(loss_fn, tx, mesh, donate=False)
  state = train.create_state(params, {}, tx, mesh)
  good = sharding.to_global({"x": np.ones((8, 3), np.float32)}, mesh)
  bad = sharding.to_global({"x": np.full((8, 3), np.nan, np.float32)}, mesh)
  rng = jax.random.PRNGKey(0)
  state, _ = step(state, good, rng)
  w_after_good = np.asarray(state.params["w"])
  state, m = step(state, bad, rng)
  np.testing.assert_array_equal(np.asarray(state.params["w"]), w_after_good)
  assert int(state.nonfinite_steps) == 1 and int(state.first_nonfinite) == 1
  assert int(state.step) == 2
  assert float(m.compute()["nonfinite"]) == 1.0


def test_each_step_draws_its_own_key_from_the_stream_and_the_step():
  # The key is a function of (stream, step) alone: every step augments differently, and a
  # state resumed at step k draws what the uninterrupted run drew there.
  mesh = sharding.make_mesh(8)
  tx = optax.sgd(0.1)

  def loss_fn(p, bs, batch, rng):
    return jnp.sum(p["w"] * batch["x"]) + jax.random.uniform(rng), bs

  step = train.make_step(loss_fn, tx, mesh, donate=False)
  batch = sharding.to_global({"x": np.zeros((8, 3), np.float32)}, mesh)
  stream = jax.random.key(0)

  def losses(state, n):
    out = []
    for _ in range(n):
      state, m = step(state, batch, stream)
      out.append(float(m.compute()["loss"]))
    return out

  fresh = train.create_state({"w": jnp.ones((3,))}, {}, tx, mesh)
  run = losses(fresh, 3)
  assert len(set(run)) == 3, run
  assert losses(fresh.replace(step=jnp.asarray(2, jnp.int32)), 1) == run[2:]


class _Clock:
  """time.time() that moves only when told: `batch_s` per batch handed over, `step_s` per step."""

  def __init__(self, batch_s, step_s):
    self.now, self.batch_s, self.step_s = 1000.0, batch_s, step_s

  def time(self):
    return self.now


@pytest.mark.parametrize("batch_s,key,warned", [(1.0, "image", True), (0.1, "image", False),
                                                (1.0, "repr", False)])
def test_the_time_spent_waiting_for_batches_is_measured_and_warned_of(
    tmp_path, monkeypatch, caplog, batch_s, key, warned):
  # Batches take batch_s to arrive and steps 3 s: the loop waits batch_s / (batch_s + 3) of
  # its time, in every logged row and over the run; an epoch of images above 10% gets one
  # warning (cached features, "repr", none: no input pipeline could help).
  from supcon_jax import checkpoint, metrics
  clock = _Clock(batch_s, step_s=3.0)
  monkeypatch.setattr(train, "time", clock)
  mesh = sharding.make_mesh(8)
  tx = optax.sgd(0.1)
  step = train.make_step(lambda p, bs, batch, rng: (jnp.sum(p["w"] * batch[key]), bs), tx, mesh)

  def timed_step(*args):
    clock.now += clock.step_s
    return step(*args)

  batch = sharding.to_global({key: np.ones((8, 2), np.float32)}, mesh)

  def batches(start):
    while True:
      clock.now += clock.batch_s
      yield batch

  ckpt = checkpoint.Checkpointer(str(tmp_path / "ckpt"), every_steps=1000, keep=1, meta={})
  loop = train.LoopSettings(name="t", num_steps=8, steps_per_epoch=4, images_per_step=8,
                            ckpt=ckpt, writer=metrics.Writer(str(tmp_path), tensorboard=False),
                            log_every=1, skip_nonfinite=False, started=clock.now)
  with loop.writer, caplog.at_level("WARNING"):
    train.fit(loop, train.create_state({"w": jnp.ones((2,))}, {}, tx, mesh), timed_step,
              batches, jax.random.key(0))
  ckpt.close()
  want = batch_s / (batch_s + 3.0)
  rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").open()]
  np.testing.assert_allclose([r["input_wait_fraction"] for r in rows], want, rtol=1e-9)
  assert loop.input_wait_fraction == pytest.approx(want)
  assert loop.timed_s == pytest.approx(7 * (batch_s + 3.0))  # the first step compiles
  warnings = [r for r in caplog.records if "waited for input" in r.getMessage()]
  assert len(warnings) == (1 if warned else 0), [r.getMessage() for r in warnings]
