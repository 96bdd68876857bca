"""The sharded train step: 8 devices give the same run as 1 device."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from supcon_jax import config as config_lib, methods, optim, sharding, train


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
  method = methods.get(config.method)
  model = method.build_model(config.model, 10)
  tx, _ = optim.make_optimizer(config.optim, batch_size=config.batch_size, steps_per_epoch=10,
                               total_steps=10)
  rng = jax.random.PRNGKey(0)
  params, batch_stats = train.init_model(model, 0, images.shape[1:], mesh)
  state = train.create_state(params, batch_stats, tx, mesh)
  step = train.make_step(method.loss_fn(config, model, mesh), tx, mesh)
  batch = sharding.to_global({"image": images, "label": labels}, mesh)
  losses = []
  for _ in range(num_steps):
    state, m = step(state, batch, rng)
    losses.append(float(m.compute()["loss"]))
  return losses, jax.device_get(state)


@pytest.mark.parametrize("method", ["supcon"])  # ce: same step code, covered end to end
def test_eight_devices_match_one(method):
  assert jax.device_count() == 8
  config = _tiny_config(method)
  r = np.random.default_rng(0)
  images = r.integers(0, 256, (16, 16, 16, 3), dtype=np.uint8)
  labels = r.integers(0, 4, (16,)).astype(np.int32)
  loss1, state1 = _run_steps(config, sharding.make_mesh(1), images, labels)
  loss8, state8 = _run_steps(config, sharding.make_mesh(8), images, labels)
  np.testing.assert_allclose(loss8, loss1, rtol=2e-5, atol=2e-5)
  assert loss1[0] != loss1[-1]  # the parameters did move
  for a, b in zip(jax.tree.leaves(state1), jax.tree.leaves(state8)):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-5)
  assert int(state8.step) == 3


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
