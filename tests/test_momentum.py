"""The momentum encoder and its queue (config.moco), and the chunked encoder pass as a config
switch: the queue is first in, first out; the key model follows the trained one exactly;
8 devices give the run of 1; a killed and resumed run is the uninterrupted one, bitwise."""

import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from supcon_jax import checkpoint, experiment, methods, momentum, optim, sharding, train
from supcon_jax import config as config_lib
from tests.helpers import tiny_config
from tests.rounding import (
  apart,
  assert_moved_alike,
  resnet18_sums,
  rounding,
  smooth_activations,
  trained,
)


def _state(size=6, dim=2):
  return {"params": {}, "batch_stats": {}, "queue": jnp.zeros((size, dim)),
          "queue_labels": jnp.full((size,), -1, jnp.int32), "queue_next": jnp.zeros((), jnp.int32)}


def test_queue_is_first_in_first_out_across_the_wrap_around():
  state = _state()
  for step in range(4):  # 2 keys a step into 6 places: the 4th step overwrites the oldest
    keys = jnp.full((2, 2), float(step))
    state = momentum.enqueue(state, keys, jnp.array([10 * step, 10 * step + 1]))
  np.testing.assert_array_equal(state["queue"][:, 0], [3, 3, 1, 1, 2, 2])
  np.testing.assert_array_equal(state["queue_labels"], [30, 31, 10, 11, 20, 21])
  assert int(state["queue_next"]) == 2


def _config(method="supcon", **moco):
  c = config_lib.base_config()
  c.method = method
  c.model.width = 0.0625
  c.augment.policy = "cropflip"
  c.batch_size = 8
  # Steps of 0.05 x 8 / 256 x a gradient of norm ~50 move the parameters by ~0.1: small
  # enough that a step moves the gradient by less than its size, as the comparison of runs
  # assumes (test_train.trained), and that the loss after them is checked closely.
  c.optim.update(name="sgd", base_lr=0.05, warmup_epochs=0.0)
  c.moco.update(enabled=True, momentum=0.9, queue_size=32, **moco)
  experiment.validate(c)
  return c


def _run(config, mesh, images, labels, steps):
  """(the states from the initial one to the last, losses, gradient norms) of `steps`."""
  method = methods.get(config.method)
  model = method.build_model(config, 4)
  tx, _ = optim.make_optimizer(config.optim, batch_size=config.batch_size, steps_per_epoch=4,
                               total_steps=4)
  params, batch_stats = train.init_model(model, 0, images.shape[1:], mesh)
  state = train.create_state(params, batch_stats, tx, mesh,
                             momentum=method.initial_momentum(config, params, batch_stats))
  step = train.make_step(method.loss_fn(config, model, mesh), tx, mesh, donate=False)
  batch = sharding.to_global({"image": images, "label": labels}, mesh)
  states, losses, norms = [jax.device_get(state)], [], []
  for _ in range(steps):
    state, m = step(state, batch, jax.random.PRNGKey(0))
    states.append(jax.device_get(state))
    values = m.compute()
    losses.append(float(values["loss"]))
    norms.append(float(values["grad_norm"]))
  return states, losses, norms


def _data():
  r = np.random.default_rng(0)
  return r.integers(0, 256, (8, 8, 8, 3), dtype=np.uint8), r.integers(0, 4, 8).astype(np.int32)


def test_the_key_model_follows_the_trained_one_and_the_queue_fills():
  images, labels = _data()
  states, _, _ = _run(_config(), sharding.make_mesh(1), images, labels, steps=2)
  for before, after in zip(states, states[1:]):
    # m * key + (1 - m) * the trained parameters the step started from (MoCo's order).
    want = jax.tree.map(lambda k, q: 0.9 * np.asarray(k, np.float64) + 0.1 * np.asarray(q),
                        before.momentum["params"], before.params)
    for a, b in zip(jax.tree.leaves(after.momentum["params"]), jax.tree.leaves(want)):
      np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
  first, second = states[1].momentum, states[2].momentum
  np.testing.assert_array_equal(first["queue_labels"][:16], np.repeat(labels, 2))
  assert (first["queue_labels"][16:] == -1).all() and int(first["queue_next"]) == 16
  np.testing.assert_allclose(np.linalg.norm(first["queue"][:16], axis=1), 1.0, rtol=1e-5)
  assert int(second["queue_next"]) == 0 and (second["queue_labels"] >= 0).all()


def test_the_queue_gets_the_key_model_embeddings_not_the_trained_ones():
  # A key model far from the trained one (another initialisation): the keys queued after a
  # step are its embeddings of the views, with the parameters it has after following.
  config = _config()
  config.augment.policy = "none"  # each view is the image itself: the input is known
  images, labels = _data()
  mesh = sharding.make_mesh(1)
  method = methods.get("supcon")
  model = method.build_model(config, 4)
  params, stats = train.init_model(model, 0, images.shape[1:], mesh)
  key_params, key_stats = train.init_model(model, 1, images.shape[1:], mesh)
  queued = momentum.initial_state(config, key_params, key_stats)
  batch = sharding.to_global({"image": images, "label": labels}, mesh)
  _, (_, queued) = jax.jit(method.loss_fn(config, model, mesh))(
      params, (stats, queued), batch, jax.random.key(0))
  views = np.repeat((images / 255.0 - config.data.mean) / config.data.std, 2, axis=0)
  embed = lambda p, s: model.apply({"params": p, "batch_stats": s}, views.astype(np.float32),
                                   train=True, mutable=["batch_stats"])[0]["proj"]
  followed = jax.tree.map(lambda k, q: 0.9 * k + 0.1 * q, key_params, params)
  want = embed(followed, key_stats)
  assert np.abs(want - embed(params, stats)).max() > 0.1  # the two models are told apart
  np.testing.assert_allclose(queued["queue"][:16], want, rtol=0, atol=1e-5)


@pytest.mark.parametrize("method", ["supcon", "simclr"])
def test_eight_devices_match_one_with_the_queue(method):
  images, labels = _data()
  config = _config(method)
  with smooth_activations():  # gradients compared: see test_train's docstring
    one_states, one, norms = _run(config, sharding.make_mesh(1), images, labels, steps=3)
    eight_states, eight, _ = _run(config, sharding.make_mesh(8), images, labels, steps=3)
  assert one[0] != one[-1]
  # Rounding (test_train's docstring) of ResNet-18/16 on 16 views of 8 x 8, BN over all of
  # them, the logits' 128 products and log-sum-exps over 16 + 32 queued rows; a step adds the
  # gradient's sums, and SGD's update is linear in it.
  forward = resnet18_sums(0.0625, 8, 16) + [128, 48]
  update = rounding(forward + resnet18_sums(0.0625, 8, 16, backward=True))
  for k, (a, b) in enumerate(zip(one, eight)):
    # Step k's loss: every embedding, queued or not, is a unit vector off by rounding(forward),
    # each logit z_i.z_j / t by twice that / t, an anchor's loss (a log-sum-exp less a mean
    # of logits) by twice the logits'. The trained parameters it starts from, `apart` after
    # k steps, move it by at most |gradient| x that (first order); the key model, an average
    # of the trained one that feeds the loss through the queue, by as much again.
    atol = (4 * rounding(forward) / config.loss.temperature
            + 2 * norms[k] * apart(one_states[0].params, one_states[k].params, update, k))
    np.testing.assert_allclose(b, a, rtol=0, atol=atol)
  # The key model, its BN statistics and the queue after three steps, from one start: each
  # within trained(update, 3) of its displacement. The queue's keys are embeddings, off by
  # rounding(forward) plus their parameters' share, well inside that.
  np.testing.assert_equal(eight_states[0].momentum, one_states[0].momentum)
  assert_moved_alike(eight_states[-1].momentum, one_states[-1].momentum,
                     one_states[0].momentum, trained(update, 3), steps=3)


def test_a_resumed_run_is_the_uninterrupted_one_bitwise(tmp_path):
  config = tiny_config("supcon")
  config.stage = "pretrain"
  config.moco.update(enabled=True, queue_size=256)
  config.encoder_chunk_size = 32
  config.epochs = 4 / 22
  config.keep_checkpoints = 2
  experiment.train_and_evaluate(config, str(tmp_path / "whole"))
  # A run killed after its checkpoint at step 2, restarted with the same command.
  shutil.copytree(tmp_path / "whole" / "checkpoints" / "2",
                  tmp_path / "resumed" / "checkpoints" / "2")
  experiment.train_and_evaluate(config, str(tmp_path / "resumed"))

  def load(workdir):
    method = methods.get("supcon")
    mesh = sharding.make_mesh()
    model = method.build_model(config, 10)
    params, stats = train.init_model(model, 0, (8, 8, 3), mesh)
    tx, _ = optim.make_optimizer(config.optim, batch_size=64, steps_per_epoch=22,
                                 total_steps=4)
    state = train.create_state(params, stats, tx, mesh,
                               momentum=method.initial_momentum(config, params, stats))
    ckpt = checkpoint.Checkpointer(str(workdir / "checkpoints"), every_steps=2, keep=3, meta={})
    step, restored = ckpt.restore_latest(checkpoint.abstract(state))
    ckpt.close()
    return step, jax.device_get(restored)

  (step_a, whole), (step_b, resumed) = load(tmp_path / "whole"), load(tmp_path / "resumed")
  assert step_a == step_b == 4 and isinstance(resumed, train.MomentumTrainState)
  assert int(resumed.momentum["queue_next"]) == (4 * 128) % 256
  for a, b in zip(jax.tree.leaves(whole), jax.tree.leaves(resumed)):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("fields,message", [
    ({"moco.queue_size": 100}, "config.moco.queue_size=100 must be a positive multiple of "
                               "batch_size x augment.n_views = 512"),
    ({"moco.momentum": 1.0}, "config.moco.momentum=1.0"),
    ({"method": "ce"}, "config.moco.enabled: method ce has no embeddings to queue"),
    ({"encoder_chunk_size": 48, "moco.enabled": False},
     "config.encoder_chunk_size: chunk_size=48 does not divide the batch of 512 images"),
])
def test_switches_that_cannot_work_fail_validation(fields, message):
  c = config_lib.base_config()
  c.moco.enabled = True
  c.moco.queue_size = 1024
  for dotted, value in fields.items():
    section, _, name = dotted.rpartition(".")
    setattr(c.get(section) if section else c, name, value)
  with pytest.raises(ValueError, match=message):
    experiment.validate(c)
