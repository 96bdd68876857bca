"""Noise: Gaussian, shot and impulse noise (the benchmark's), speckle noise (an extra).

Gaussian, impulse and speckle noise are the reference's formulas exactly but for the random
number generator; shot noise runs NumPy's Poisson samplers for a fixed number of rounds.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from supcon_jax.corruptions import base

# One parameter per severity 1..5, from make_cifar_c.py and make_imagenet_c.py (base.py
# names the commit).
TABLES: base.Tables = {
    base.CIFAR: {
        "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),  # noise std
        "shot_noise": (500, 250, 100, 75, 50),  # Poisson events per unit intensity
        "impulse_noise": (0.01, 0.02, 0.03, 0.05, 0.07),  # fraction of values set to 0 or 1
        "speckle_noise": (0.06, 0.1, 0.12, 0.16, 0.2),  # std of the multiplicative noise
    },
    base.IMAGENET: {
        "gaussian_noise": (0.08, 0.12, 0.18, 0.26, 0.38),
        "shot_noise": (60, 25, 12, 5, 3),
        "impulse_noise": (0.03, 0.06, 0.09, 0.17, 0.27),
        "speckle_noise": (0.15, 0.2, 0.35, 0.45, 0.6),
    },
}
_param = functools.partial(base.param, TABLES)


def gaussian_noise(key: jax.Array, image: jax.Array, severity: int) -> jax.Array:
  """clip(x + c * n), n = jax.random.normal(key, x.shape): the reference's formula."""
  c = _param("gaussian_noise", severity, image.shape)
  return base.clip(image + c * jax.random.normal(key, image.shape, image.dtype))


def speckle_noise(key: jax.Array, image: jax.Array, severity: int) -> jax.Array:
  """clip(x + x * c * n), n = jax.random.normal(key, x.shape): the reference's formula."""
  c = _param("speckle_noise", severity, image.shape)
  return base.clip(image + image * c * jax.random.normal(key, image.shape, image.dtype))


_POISSON_ROUNDS = 40


def _poisson(key: jax.Array, lam: jax.Array) -> jax.Array:
  """Poisson(lam) counts (float32), each element from its own uniforms only.

  NumPy's samplers, run for a fixed 40 rounds: Knuth's product of uniforms for lam < 10
  (so capped at 40, which P(X > 40) < 1e-12 makes moot), Hormann's transformed rejection
  (PTRS) for lam >= 10, keeping the first accepted candidate (each is accepted with
  probability >= 0.75; if none is, p < 1e-24, the mode). Round i draws
  `jax.random.uniform(jax.random.fold_in(key, i), (3,) + lam.shape)`: a Knuth factor and
  PTRS's U and V. Not jax.random.poisson: its rejection loop keeps the last accepted
  candidate of a loop that runs until every element has one, so under vmap an image's
  noise would depend on the other images of the batch.
  """
  small = lam < 10.0
  enlam = jnp.exp(-jnp.where(small, lam, 0.0))
  big = jnp.where(small, 10.0, lam)  # PTRS is evaluated everywhere: keep it finite
  loglam = jnp.log(big)
  b = 0.931 + 2.53 * jnp.sqrt(big)
  a = -0.059 + 0.02483 * b
  invalpha = 1.1239 + 1.1328 / (b - 3.4)
  vr = 0.9277 - 3.6224 / (b - 2.0)

  def one_round(i, carry):
    prod, knuth, ptrs, done = carry
    w, u, v = jax.random.uniform(jax.random.fold_in(key, i), (3,) + lam.shape)
    prod = prod * w
    knuth = knuth + (prod > enlam)
    u = u - 0.5
    us = 0.5 - jnp.abs(u)
    k = jnp.floor((2.0 * a / us + b) * u + big + 0.43)
    squeeze = (us >= 0.07) & (v <= vr)
    rejected = (k < 0) | ((us < 0.013) & (v > us))
    fits = (jnp.log(v) + jnp.log(invalpha) - jnp.log(a / (us * us) + b)
            <= -big + k * loglam - jax.lax.lgamma(k + 1.0))
    accept = squeeze | (~rejected & fits)
    ptrs = jnp.where(done | ~accept, ptrs, k)
    return prod, knuth, ptrs, done | accept

  init = (jnp.ones_like(lam), jnp.zeros_like(lam), jnp.floor(big), jnp.zeros(lam.shape, bool))
  _, knuth, ptrs, _ = jax.lax.fori_loop(0, _POISSON_ROUNDS, one_round, init)
  return jnp.where(small, knuth, ptrs)


def shot_noise(key: jax.Array, image: jax.Array, severity: int) -> jax.Array:
  """clip(Poisson(c * x) / c), as the reference; the counts from _poisson(key, c * x)."""
  c = _param("shot_noise", severity, image.shape)
  return base.clip(_poisson(key, image * c) / c)


def impulse_noise(key: jax.Array, image: jax.Array, severity: int) -> jax.Array:
  """Salt and pepper as skimage's random_noise(mode='s&p', amount=c).

  Each value (each channel separately) is hit with probability c, then set to 1 or 0 with
  equal odds; `hit, salt = jax.random.uniform(key, (2,) + x.shape)`.
  """
  c = _param("impulse_noise", severity, image.shape)
  hit, salt = jax.random.uniform(key, (2,) + image.shape, image.dtype)
  return jnp.where(hit < c, jnp.where(salt < 0.5, 1.0, 0.0), image)
