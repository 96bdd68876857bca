"""What the corruption groups share: severities, the choice of parameter table by image size,
ops whose randomness is drawn apart, and the filters several groups use (skimage's Gaussian,
the reference's clipped zoom), each as an exact matrix built on the host.

The tables are transcribed from github.com/hendrycks/robustness, ImageNet-C/create_c/
make_cifar_c.py (last changed in ca36008, January 2019) and make_imagenet_c.py (e0377d4,
September 2018), both read at commit 8190fe329f5f072a06e3a2aea02bb5dda69aed9f.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

SEVERITIES = (1, 2, 3, 4, 5)
CIFAR, IMAGENET = "CIFAR-10-C", "ImageNet-C"
# The reference made CIFAR-10-C's parameters for 32-px images and ImageNet-C's for 224-px
# crops; an image whose shorter side is at least 85 px (their geometric mean) is nearer
# ImageNet's scale, so it gets ImageNet-C's parameters, a smaller one CIFAR-10-C's.
IMAGENET_FROM = 85

# {benchmark: {corruption: its parameter at severities 1..5}}
Tables = dict[str, dict[str, tuple]]

# Full float32 for the ops' matrix products: on recent GPUs the default may be TF32, whose
# ~1e-3 relative error is a quarter of a level.
HIGHEST = jax.lax.Precision.HIGHEST


def benchmark_for(shape: tuple[int, ...]) -> str:
  """Whose parameters corrupt images of `shape` ([H, W, ...]): CIFAR or IMAGENET."""
  return IMAGENET if min(shape[:2]) >= IMAGENET_FROM else CIFAR


def check_severity(severity: Any) -> None:
  # Severity picks a Python constant, so it must be static: a traced value cannot.
  if (isinstance(severity, bool) or not isinstance(severity, (int, np.integer))
      or severity not in SEVERITIES):
    raise ValueError(f"severity={severity!r} is not one of {', '.join(map(str, SEVERITIES))} "
                     "(a static Python int)")


def param(tables: Tables, name: str, severity: int, shape: tuple[int, ...]) -> Any:
  """The parameter of `name` at `severity` for images of `shape`, from their benchmark's table."""
  check_severity(severity)
  return tables[benchmark_for(shape)][name][severity - 1]


def clip(img: jax.Array) -> jax.Array:
  return jnp.clip(img, 0.0, 1.0)


@dataclasses.dataclass(frozen=True)
class RandomOp:
  """A random op as two parts: `draws(key, shape, severity)`, its random numbers, and
  `apply(draws, image, severity)`, a deterministic function of them; calling it runs both.
  A test can so feed the same draws to a reference, and check the draws on their own."""
  draws: Callable[[jax.Array, tuple[int, ...], int], Any]
  apply: Callable[[Any, jax.Array, int], jax.Array]

  def __call__(self, key: jax.Array, image: jax.Array, severity: int) -> jax.Array:
    return self.apply(self.draws(key, image.shape, severity), image, severity)


def _fold(index: np.ndarray, n: int, mode: str) -> np.ndarray:
  # Indices beyond [0, n) read back into it, as scipy.ndimage's boundary modes do however
  # far out they fall: "nearest" repeats the edge, "reflect" mirrors about the half-sample
  # edges (d c b a | a b c d | d c b a: period 2n).
  if mode == "nearest":
    return np.clip(index, 0, n - 1)
  index = index % (2 * n)
  return np.where(index < n, index, 2 * n - 1 - index)


def gaussian_matrix(n: int, sigma: float, mode: str, truncate: float = 4.0) -> np.ndarray:
  """[n, n] matrix G with G @ x = scipy.ndimage.gaussian_filter1d(x, sigma, mode=mode,
  truncate=truncate) along an axis of n samples (skimage.filters.gaussian calls it; its
  default mode is "nearest"). Exact for any kernel width, wider than n included: every tap
  reads its sample through the mode's folding. sigma <= 1e-15 leaves the axis as it is, as
  scipy does."""
  if sigma <= 1e-15:
    return np.eye(n)
  radius = int(truncate * sigma + 0.5)
  offsets = np.arange(-radius, radius + 1)
  taps = np.exp(-0.5 / (sigma * sigma) * offsets.astype(np.float64)**2)
  taps /= taps.sum()
  rows = np.repeat(np.arange(n), offsets.size)
  cols = _fold((np.arange(n)[:, None] + offsets[None, :]).ravel(), n, mode)
  matrix = np.zeros((n, n))
  np.add.at(matrix, (rows, cols), np.tile(taps, n))
  return matrix


def separable(image: jax.Array, rows: np.ndarray, cols: np.ndarray) -> jax.Array:
  """rows @ image @ cols.T on every channel: [H', H] x [H, W, C] x [W', W] -> [H', W', C]."""
  return jnp.einsum("ih,hwc,jw->ijc", rows.astype(np.float32), image, cols.astype(np.float32),
                    precision=HIGHEST)


def gaussian_blur_image(image: jax.Array, sigma: float, mode: str = "nearest",
                        truncate: float = 4.0) -> jax.Array:
  """skimage.filters.gaussian(image, sigma, mode, truncate) over H and W of [H, W, C]."""
  h, w = image.shape[:2]
  return separable(image, gaussian_matrix(h, sigma, mode, truncate),
                   gaussian_matrix(w, sigma, mode, truncate))


def zoom_matrix(n: int, zoom: float) -> np.ndarray:
  """[n, n] matrix of the reference's clipped_zoom along an axis of n samples: the centre
  ceil(n / zoom) samples, scipy.ndimage.zoom(order=1)'d (out = round(crop * zoom) samples,
  output o reading input o * (crop - 1) / (out - 1), linearly), their centre n kept. The
  reference crops both axes by the height (its images are square); here each axis by its
  own length."""
  crop = int(np.ceil(n / zoom))
  top = (n - crop) // 2
  out = int(round(crop * zoom))
  trim = (out - n) // 2
  ratio = (crop - 1) / (out - 1) if out > 1 else 1.0
  coords = np.arange(trim, trim + n) * ratio
  lo = np.floor(coords).astype(int)
  frac = coords - lo
  matrix = np.zeros((n, n))
  np.add.at(matrix, (np.arange(n), top + lo), 1.0 - frac)
  np.add.at(matrix, (np.arange(n), top + np.minimum(lo + 1, crop - 1)), frac)
  return matrix


def clipped_zoom(image: jax.Array, zoom: float) -> jax.Array:
  """make_cifar_c's clipped_zoom(image, zoom) of [H, W, C]: the centre, zoomed to fill it."""
  h, w = image.shape[:2]
  return separable(image, zoom_matrix(h, zoom), zoom_matrix(w, zoom))
