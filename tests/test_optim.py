"""Optimiser tests against NumPy float64 references written from the LARS / SGD formulas."""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

from supcon_jax import optim
from supcon_jax.config import base_config

NAMES = ("lars", "sgd", "rmsprop", "adamw")
EXCLUDED = (("dense", "bias"), ("bn", "scale"), ("bn", "bias"))


def _config(**overrides):
  c = base_config().optim
  c.update(overrides)
  return c


def _toy_params():
  return {"dense": {"kernel": np.array([[0.5, -1.0], [2.0, 0.25]], np.float32),
                    "bias": np.array([0.1, -0.2], np.float32)},
          "bn": {"scale": np.array([1.0, 0.8], np.float32),
                 "bias": np.array([0.0, 0.3], np.float32)}}


def _toy_grads(step):
  rng = np.random.default_rng(step)
  return jax.tree.map(lambda p: rng.normal(size=p.shape).astype(np.float32), _toy_params())


def _flat(tree):
  return {k: np.asarray(v, np.float64) for k, v in traverse_util.flatten_dict(tree).items()}


def _run(tx, params, grads_per_step):
  """Applies tx under jit; returns the list of update trees."""
  state = tx.init(params)
  update = jax.jit(tx.update)
  out = []
  for grads in grads_per_step:
    updates, state = update(grads, state, params)
    params = optax.apply_updates(params, updates)
    out.append(updates)
  return out


def _cosine_lr(peak, step, total):
  return peak * 0.5 * (1 + math.cos(math.pi * min(step, total) / total))


class _TinyNet(nn.Module):

  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.Conv(4, (3, 3), use_bias=False)(x)
    x = nn.BatchNorm(use_running_average=not train)(x)
    return nn.Dense(3)(x.mean(axis=(1, 2)))


def test_decay_mask_on_flax_model_selects_only_kernels():
  variables = _TinyNet().init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)), train=False)
  mask = traverse_util.flatten_dict(optim.decay_mask(variables["params"]))
  assert mask == {("Conv_0", "kernel"): True, ("BatchNorm_0", "scale"): False,
                  ("BatchNorm_0", "bias"): False, ("Dense_0", "kernel"): True,
                  ("Dense_0", "bias"): False}


def test_decay_mask_needs_both_name_and_rank():
  params = {"a": {"kernel": np.zeros(3), "scale": np.zeros((2, 2))}}
  assert optim.decay_mask(params) == {"a": {"kernel": False, "scale": False}}


def test_schedule_matches_warmup_cosine_formula():
  c = _config(base_lr=0.2, warmup_epochs=2.0)
  sched = optim.lr_schedule(c, batch_size=512, steps_per_epoch=10, total_steps=100)
  peak, warmup, total = 0.2 * 512 / 256, 20, 100

  def expected(t):
    if t < warmup:
      return peak * t / warmup
    return _cosine_lr(peak, t - warmup, total - warmup)

  for t in (0, 1, 10, 19, 20, 21, 60, 99, 100, 150):
    np.testing.assert_allclose(float(sched(t)), expected(t), rtol=1e-6, atol=1e-7, err_msg=t)
  assert float(sched(20)) == pytest.approx(0.4)
  assert float(sched(60)) == pytest.approx(0.2)
  assert float(sched(100)) == pytest.approx(0.0, abs=1e-7)


def test_schedule_without_warmup_starts_at_peak():
  sched = optim.lr_schedule(_config(base_lr=0.1, warmup_epochs=0.0), batch_size=256,
                            steps_per_epoch=5, total_steps=40)
  for t in (0, 7, 20, 40):
    np.testing.assert_allclose(float(sched(t)), _cosine_lr(0.1, t, 40), rtol=1e-6, atol=1e-7)


def test_schedule_fractional_warmup_rounds_to_steps():
  sched = optim.lr_schedule(_config(base_lr=0.1, warmup_epochs=0.5), batch_size=256,
                            steps_per_epoch=10, total_steps=40)
  np.testing.assert_allclose(float(sched(2)), 0.1 * 2 / 5, rtol=1e-6)
  np.testing.assert_allclose(float(sched(5)), 0.1, rtol=1e-6)


@pytest.mark.parametrize("fraction", [0.1, 0.2])
def test_warmup_longer_than_its_share_of_the_run_is_capped(fraction):
  # 10 warm-up epochs asked, a run of 3 (e.g. what a time budget left): the rate must still
  # peak in the first half and decay to zero at the end.
  c = _config(base_lr=0.1, warmup_epochs=10.0, max_warmup_fraction=fraction)
  sched = optim.lr_schedule(c, batch_size=256, steps_per_epoch=10, total_steps=30)
  warmup = int(fraction * 30)
  values = np.array([float(sched(t)) for t in range(31)])
  expected = [0.1 * t / warmup if t < warmup else _cosine_lr(0.1, t - warmup, 30 - warmup)
              for t in range(31)]
  np.testing.assert_allclose(values, expected, rtol=1e-6, atol=1e-8)
  assert values.argmax() == warmup < 15 and values[-1] < 1e-6
  plan = optim.schedule_plan(c, batch_size=256, steps_per_epoch=10, total_steps=30)
  assert plan["warmup_steps"] == warmup and plan["warmup_capped"]
  assert not optim.schedule_plan(c, batch_size=256, steps_per_epoch=10,
                                 total_steps=1000)["warmup_capped"]


def _lars_reference(params, grads_per_step, lrs, *, wd, tc, momentum):
  """LARS (You et al. 2017) as in SimCLR: v = m v + lr * tr * (g + wd w); w -= v."""
  w = _flat(params)
  v = {k: np.zeros_like(x) for k, x in w.items()}
  out = []
  for grads, lr in zip(grads_per_step, lrs):
    g = _flat(grads)
    step = {}
    for k in w:
      if k in EXCLUDED:
        d = g[k]
      else:
        d = g[k] + wd * w[k]
        d = d * tc * np.linalg.norm(w[k]) / np.linalg.norm(d)
      v[k] = momentum * v[k] + lr * d
      step[k] = -v[k]
      w[k] = w[k] + step[k]
    out.append(step)
  return out


def test_lars_two_steps_match_hand_computation():
  wd, tc, m, total = 0.1, 0.001, 0.9, 10
  c = _config(name="lars", base_lr=0.5, warmup_epochs=0.0, weight_decay=wd,
              trust_coefficient=tc, momentum=m)
  tx, _ = optim.make_optimizer(c, batch_size=512, steps_per_epoch=5, total_steps=total)
  grads = [_toy_grads(0), _toy_grads(1)]
  peak = 0.5 * 512 / 256
  lrs = [_cosine_lr(peak, t, total) for t in range(2)]
  expected = _lars_reference(_toy_params(), grads, lrs, wd=wd, tc=tc, momentum=m)
  for got, want in zip(_run(tx, _toy_params(), grads), expected):
    got = _flat(got)
    for k in want:
      np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-9, err_msg=str(k))


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_two_steps_match_torch_style_l2(nesterov):
  wd, m, lr = 0.05, 0.9, 0.1
  c = _config(name="sgd", base_lr=lr, warmup_epochs=0.0, weight_decay=wd, momentum=m,
              nesterov=nesterov)
  # A long run keeps the cosine at the peak to within float32 for two steps.
  tx, _ = optim.make_optimizer(c, batch_size=256, steps_per_epoch=1, total_steps=10**6)
  grads = [_toy_grads(0), _toy_grads(1)]
  w, buf = _flat(_toy_params()), None
  got_steps = _run(tx, _toy_params(), grads)
  for g, got in zip(grads, got_steps):
    g = _flat(g)
    d = {k: g[k] + (0.0 if k in EXCLUDED else wd * w[k]) for k in w}
    buf = d if buf is None else {k: m * buf[k] + d[k] for k in w}
    direction = {k: d[k] + m * buf[k] for k in w} if nesterov else buf
    got = _flat(got)
    for k in w:
      np.testing.assert_allclose(got[k], -lr * direction[k], rtol=1e-5, atol=1e-9,
                                 err_msg=str(k))
      w[k] = w[k] + got[k]


@pytest.mark.parametrize("name", NAMES)
def test_weight_decay_reaches_only_masked_leaves(name):
  c = _config(name=name, base_lr=0.1, warmup_epochs=0.0, weight_decay=0.01)
  tx, _ = optim.make_optimizer(c, batch_size=256, steps_per_epoch=1, total_steps=10)
  zero_grads = jax.tree.map(np.zeros_like, _toy_params())
  (updates,) = _run(tx, _toy_params(), [zero_grads])
  updates = _flat(updates)
  for k, u in updates.items():
    if k in EXCLUDED:
      assert np.all(u == 0), k
    else:
      assert np.all(u != 0), k


@pytest.mark.parametrize("name", NAMES)
def test_each_optimizer_takes_a_finite_step(name):
  c = _config(name=name, warmup_epochs=0.0)
  tx, sched = optim.make_optimizer(c, batch_size=64, steps_per_epoch=4, total_steps=8)
  assert float(sched(0)) == pytest.approx(c.base_lr * 64 / 256)
  for u in _flat(_run(tx, _toy_params(), [_toy_grads(0)])[0]).values():
    assert np.all(np.isfinite(u)) and np.any(u != 0)


def test_linear_stage_config_builds():
  tx, _ = optim.make_optimizer(base_config().linear.optim, batch_size=256, steps_per_epoch=3,
                               total_steps=30)
  assert _run(tx, _toy_params(), [_toy_grads(0)])


def test_unknown_name_lists_valid_ones():
  with pytest.raises(ValueError, match=r"'adam'.*lars.*sgd.*rmsprop.*adamw"):
    optim.make_optimizer(_config(name="adam"), batch_size=256, steps_per_epoch=1,
                         total_steps=10)


@pytest.mark.parametrize("overrides, kwargs, culprit", [
    ({"base_lr": 0.0}, {}, "base_lr"),
    ({"base_lr": -0.1}, {}, "base_lr"),
    ({"weight_decay": -1e-4}, {}, "weight_decay"),
    ({"warmup_epochs": -1.0}, {}, "warmup_epochs"),
    ({"momentum": 1.0}, {}, "momentum"),
    ({"trust_coefficient": 0.0}, {}, "trust_coefficient"),
    ({}, {"batch_size": 0}, "batch_size"),
    ({}, {"steps_per_epoch": 0}, "steps_per_epoch"),
    ({}, {"total_steps": 0}, "total_steps"),
])
def test_bad_values_raise(overrides, kwargs, culprit):
  args = dict(batch_size=256, steps_per_epoch=1, total_steps=10) | kwargs
  with pytest.raises(ValueError, match=culprit):
    optim.make_optimizer(_config(**overrides), **args)
