"""Blur: defocus, glass, motion and zoom blur (the benchmark's), Gaussian blur (an extra).

Defocus, glass, zoom and Gaussian blur match the reference up to float32 arithmetic; motion
blur is ImageMagick's kernel in float, without its 8-bit PNG round trip.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from supcon_jax.corruptions import base

# One parameter per severity 1..5, from make_cifar_c.py and make_imagenet_c.py (base.py
# names the commit).
TABLES: base.Tables = {
    base.CIFAR: {
        # disk radius, sigma of the Gaussian that anti-aliases the disk
        "defocus_blur": ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)),
        # Gaussian sigma, largest pixel offset, passes of the shuffle
        "glass_blur": ((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)),
        "motion_blur": ((6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)),  # radius, sigma
        # zoom factors: the reference's np.arange(start, stop, step)
        "zoom_blur": ((1, 1.06, 0.01), (1, 1.11, 0.01), (1, 1.16, 0.01), (1, 1.21, 0.01),
                      (1, 1.26, 0.01)),
        "gaussian_blur": (0.4, 0.6, 0.7, 0.8, 1),  # sigma
    },
    base.IMAGENET: {
        "defocus_blur": ((3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)),
        "glass_blur": ((0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2)),
        "motion_blur": ((10, 3), (15, 5), (15, 8), (15, 12), (20, 15)),
        "zoom_blur": ((1, 1.11, 0.01), (1, 1.16, 0.01), (1, 1.21, 0.02), (1, 1.26, 0.02),
                      (1, 1.31, 0.03)),
        "gaussian_blur": (1, 2, 3, 4, 6),
    },
}
_param = functools.partial(base.param, TABLES)


def _disk_kernel(radius: float, alias_blur: float) -> np.ndarray:
  # make_cifar_c's disk(): on a grid of +-8 pixels (+-radius beyond 8), the pixels within
  # `radius` of the centre, normalised, smoothed by cv2.GaussianBlur (3x3, 5x5 beyond 8)
  # with cv2's reflect-101 border on that grid (a disk of radius 8 or 10 touches it); then
  # cut to its non-zero support, which the correlation's border does not see.
  half, ksize = (8, 3) if radius <= 8 else (int(radius), 5)
  grid = np.arange(-half, half + 1)
  disk = (grid[:, None]**2 + grid[None, :]**2 <= radius**2).astype(np.float64)
  disk /= disk.sum()
  taps = np.exp(-(np.arange(ksize) - ksize // 2)**2 / (2.0 * alias_blur**2))
  taps /= taps.sum()
  padded = np.pad(disk, ksize // 2, mode="reflect")
  size = 2 * half + 1
  kernel = sum(taps[i] * taps[j] * padded[i:i + size, j:j + size]
               for i in range(ksize) for j in range(ksize))
  reach = half - np.flatnonzero(kernel.any(axis=1)).min()
  return kernel[half - reach:half + reach + 1, half - reach:half + reach + 1]


def _correlate(image: jax.Array, kernel: np.ndarray) -> jax.Array:
  # cv2.filter2D: correlation centred on the kernel, border reflected without repeating
  # the edge pixel (BORDER_REFLECT_101, which is NumPy's "reflect").
  kh, kw = kernel.shape
  h, w = image.shape[:2]
  padded = jnp.pad(image, ((kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)), mode="reflect")
  return sum(float(kernel[i, j]) * padded[i:i + h, j:j + w]
             for i in range(kh) for j in range(kw) if kernel[i, j] != 0)


def defocus_blur(key: jax.Array, image: jax.Array, severity: int) -> jax.Array:
  """Correlation with the reference's anti-aliased disk (cv2 kernel and border); no key.

  Matches make_cifar_c.py up to float32 arithmetic: the kernel is the same disk, blurred
  by the same Gaussian on the same grid, applied per channel with the same reflect-101
  border.
  """
  del key
  radius, alias_blur = _param("defocus_blur", severity, image.shape)
  return base.clip(_correlate(image, _disk_kernel(radius, alias_blur)))


def _swept(n: int, delta: int) -> np.ndarray:
  # The rows (or columns) the reference's shuffle visits, in its order:
  # range(n - delta, delta, -1).
  return np.arange(n - delta, delta, -1)


def _glass_draws(key: jax.Array, shape: tuple[int, ...], severity: int) -> jax.Array:
  """The pixel offsets of every move, int32 [passes, rows, columns, (dx, dy)] in the
  reference's loop order: its randint(-delta, delta, size=(2,)), upper bound excluded."""
  _, delta, passes = _param("glass_blur", severity, shape)
  size = (passes, len(_swept(shape[0], delta)), len(_swept(shape[1], delta)), 2)
  return jax.random.randint(key, size, -delta, delta)


def _blurred_levels(image: jax.Array, sigma: float) -> jax.Array:
  """np.uint8(skimage.filters.gaussian(x, sigma) * 255) for x of whole levels (the
  reference's are uint8; others are rounded to levels first), as exact arithmetic decides
  it: L + floor(sum over the neighbours (edges repeated) of w_a w_b (L' - L)), the level
  differences first summed exactly (as integers) over the neighbours of equal weight, so
  that a flat area or an even gradient keeps its level. floor(blur * 255) in float32 puts
  such levels on either side at random."""
  levels = jnp.round(image * 255.0)
  radius = int(4.0 * sigma + 0.5)
  taps = base.gaussian_matrix(2 * radius + 1, sigma, "nearest")[radius]
  h, w = image.shape[:2]
  padded = jnp.pad(levels, ((radius, radius), (radius, radius), (0, 0)), mode="edge")
  differences = {}  # {(near, far) offset: sum of L' - L over the neighbours at that offset}
  for a in range(-radius, radius + 1):
    for b in range(-radius, radius + 1):
      if a or b:
        ring = tuple(sorted((abs(a), abs(b))))
        here = padded[radius + a:radius + a + h, radius + b:radius + b + w] - levels
        differences[ring] = differences.get(ring, 0.0) + here
  # Smallest weights first: their terms are not lost in the larger ones' rounding.
  rings = sorted(differences, key=lambda ring: -(ring[0]**2 + ring[1]**2))
  offset = sum(float(taps[radius + i] * taps[radius + j]) * differences[i, j]
               for i, j in rings)
  return levels + jnp.floor(offset)


def _glass_apply(offsets: jax.Array, image: jax.Array, severity: int) -> jax.Array:
  """skimage's Gaussian, truncated to 8 bits (_blurred_levels), then the reference's
  shuffle: pixel (h, w), for h and w from the far edge - delta down to delta + 1, one after
  the other, takes the value of (h + dy, w + dx), so a moved value can move on; then the
  Gaussian again. The reference writes a swap, x[h, w], x[h', w'] = x[h', w'], x[h, w],
  but its pixels are NumPy views (its images have channels), so the second assignment
  writes back the value the first copied (numpy/numpy#14428): a copy, as here. A
  lax.fori_loop over the pixels."""
  sigma, delta, _ = _param("glass_blur", severity, image.shape)
  h, w, c = image.shape
  levels = _blurred_levels(image, sigma).reshape(h * w, c)
  here = (_swept(h, delta)[:, None] * w + _swept(w, delta)[None, :]).ravel()
  here = jnp.asarray(np.tile(here, offsets.shape[0]))
  there = here + (offsets[..., 1] * w + offsets[..., 0]).ravel()

  def copy(i, flat):
    return flat.at[here[i]].set(flat[there[i]])

  levels = jax.lax.fori_loop(0, here.size, copy, levels)
  return base.clip(base.gaussian_blur_image(levels.reshape(h, w, c) / 255.0, sigma))


glass_blur = base.RandomOp(_glass_draws, _glass_apply)


def magick_motion_blur(image: jax.Array, radius: int, sigma: float,
                       angle: jax.Array) -> jax.Array:
  """ImageMagick's MotionBlurImage(radius, sigma, angle in degrees) of [H, W, C] in JAX.

  As ImageMagick (and not a centred line kernel): the blur is one-sided, taps k = 0 ..
  2 * radius with weights exp(-k^2 / (2 sigma^2)), normalised; tap k reads the pixel
  round(k cos a) columns right and round(k sin a) rows down (rounding halves down, as its
  ceil(v - 0.5)); pixels beyond the border repeat the edge (its default virtual pixels).
  It differs from ImageMagick only in arithmetic: float32 in [0, 1], where the reference
  goes through an 8-bit PNG and back.
  """
  width = 2 * radius + 1  # ImageMagick's GetOptimalKernelWidth1D for radius > 0
  taps = np.exp(-np.arange(width)**2 / (2.0 * sigma**2))
  taps /= taps.sum()
  angle = jnp.deg2rad(angle)
  steps = jnp.arange(width, dtype=jnp.float32)
  dx = jnp.ceil(steps * jnp.cos(angle) - 0.5).astype(jnp.int32)
  dy = jnp.ceil(steps * jnp.sin(angle) - 0.5).astype(jnp.int32)
  h, w = image.shape[:2]
  rows = jnp.clip(jnp.arange(h)[None, :] + dy[:, None], 0, h - 1)  # [width, H]
  cols = jnp.clip(jnp.arange(w)[None, :] + dx[:, None], 0, w - 1)  # [width, W]
  shifted = image[rows[:, :, None], cols[:, None, :]]  # [width, H, W, C]
  return jnp.einsum("k,khwc->hwc", taps.astype(np.float32), shifted, precision=base.HIGHEST)


def motion_blur(key: jax.Array, image: jax.Array, severity: int) -> jax.Array:
  """magick_motion_blur at the reference's radius and sigma, its angle
  `jax.random.uniform(key, (), minval=-45, maxval=45)` as the reference's U(-45, 45)."""
  radius, sigma = _param("motion_blur", severity, image.shape)
  angle = jax.random.uniform(key, (), minval=-45.0, maxval=45.0)
  return base.clip(magick_motion_blur(image, radius, sigma, angle))


def zoom_blur(key: jax.Array, image: jax.Array, severity: int) -> jax.Array:
  """(x + sum of clipped_zoom(x, z) over the reference's zoom factors z) / (their number
  + 1), each zoom an exact matrix of scipy.ndimage.zoom(order=1)'s interpolation; no key."""
  del key
  factors = np.arange(*_param("zoom_blur", severity, image.shape))
  h, w = image.shape[:2]
  rows = np.stack([base.zoom_matrix(h, z) for z in factors]).astype(np.float32)
  cols = np.stack([base.zoom_matrix(w, z) for z in factors]).astype(np.float32)
  zoomed = jnp.einsum("zih,hwc,zjw->ijc", rows, image, cols, precision=base.HIGHEST)
  return base.clip((image + zoomed) / (len(factors) + 1))


def gaussian_blur(key: jax.Array, image: jax.Array, severity: int) -> jax.Array:
  """skimage.filters.gaussian(x, sigma=c) (edge mode "nearest", truncate 4), as the
  reference; no key."""
  del key
  return base.clip(base.gaussian_blur_image(image, _param("gaussian_blur", severity,
                                                          image.shape)))
