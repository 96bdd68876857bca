"""Digital: contrast, elastic transform and pixelate (the benchmark's; JPEG, the fourth, is
jpeg.py), saturate (an extra).

Contrast and saturate are exact; elastic transform is the reference's OpenCV affine warp
and scipy's map_coordinates, up to float32 arithmetic; pixelate is PIL's BOX resizing
without its 8-bit rounding.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from supcon_jax.corruptions import base

# One parameter per severity 1..5, from make_cifar_c.py and make_imagenet_c.py (base.py
# names the commit). Elastic's are pixels, as the reference writes them: multiples of
# IMSIZE = 32 for CIFAR, of 244 for ImageNet (224 intended, the reference notes: the
# figures are what made ImageNet-C).
TABLES: base.Tables = {
    base.CIFAR: {
        "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),  # factor about each channel's mean
        # displacement scale, its smoothing sigma, the affine's corner jitter
        "elastic_transform": ((32 * 0, 32 * 0, 32 * 0.08), (32 * 0.05, 32 * 0.2, 32 * 0.07),
                              (32 * 0.08, 32 * 0.06, 32 * 0.06), (32 * 0.1, 32 * 0.04, 32 * 0.05),
                              (32 * 0.1, 32 * 0.03, 32 * 0.03)),
        "pixelate": (0.95, 0.9, 0.85, 0.75, 0.65),  # downscale factor
        "saturate": ((0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2)),  # HSV s * a + b
    },
    base.IMAGENET: {
        "contrast": (0.4, 0.3, 0.2, 0.1, 0.05),
        "elastic_transform": ((244 * 2, 244 * 0.7, 244 * 0.1), (244 * 2, 244 * 0.08, 244 * 0.2),
                              (244 * 0.05, 244 * 0.01, 244 * 0.02),
                              (244 * 0.07, 244 * 0.01, 244 * 0.02),
                              (244 * 0.12, 244 * 0.01, 244 * 0.02)),
        "pixelate": (0.6, 0.5, 0.4, 0.3, 0.25),
        "saturate": ((0.3, 0), (0.1, 0), (2, 0), (5, 0.1), (20, 0.2)),
    },
}
_param = functools.partial(base.param, TABLES)


def contrast(key: jax.Array, image: jax.Array, severity: int) -> jax.Array:
  """(x - m) * c + m with m each channel's mean, as the reference; no key."""
  del key
  c = _param("contrast", severity, image.shape)
  mean = image.mean(axis=(0, 1), keepdims=True)
  return base.clip((image - mean) * c + mean)


# ------------------------------------------------------------------------------ elastic


def _elastic_draws(key: jax.Array, shape: tuple[int, ...], severity: int
                   ) -> tuple[jax.Array, jax.Array]:
  """(the affine's three target points' offsets [3, 2], uniform in [-jitter, jitter); the
  displacement noise [2, H, W] (for x, then y), uniform in [-1, 1)): the reference's draws,
  in its order."""
  jitter = _param("elastic_transform", severity, shape)[2]
  affine_key, field_key = jax.random.split(key)
  offsets = jax.random.uniform(affine_key, (3, 2), minval=-jitter, maxval=jitter)
  return offsets, jax.random.uniform(field_key, (2, *shape[:2]), minval=-1.0, maxval=1.0)


def _affine_points(h: int, w: int) -> np.ndarray:
  # The reference's pts1, in float32 as it builds them; cv2 reads each as (x, y).
  centre = np.float32([h, w]) // 2
  size = min(h, w) // 3
  return np.float32([centre + size, [centre[0] + size, centre[1] - size], centre - size])


def _reflect_101(index: jax.Array, n: int) -> jax.Array:
  # cv2's BORDER_REFLECT_101 (gfedcb|abcdefgh|gfedcba), however far out: period 2 (n - 1).
  period = max(2 * (n - 1), 1)
  index = index % period
  return jnp.where(index < n, index, period - index)


def _warp_affine(image: jax.Array, src: np.ndarray, dst: jax.Array) -> jax.Array:
  """cv2.warpAffine(image, cv2.getAffineTransform(src, dst), borderMode=REFLECT_101) of
  [H, W, C], as OpenCV 3.4 computes it (the one that made the benchmarks): the inverse map
  in fixed point with 10 fraction bits, rounded to 1/32 pixel, bilinear weights of those
  32nds. The matrix is float32 here, double there: a pixel reads from the neighbouring
  32nd now and then (about 2 in 1,000 at 224 px)."""
  h, w = image.shape[:2]
  # getAffineTransform: the 2x3 M with M [x, y, 1] = dst for each src point.
  m = jnp.linalg.solve(jnp.concatenate([src, np.ones((3, 1), np.float32)], axis=1), dst).T
  # warpAffine maps each output pixel back through M's inverse, computed as OpenCV does.
  det = m[0, 0] * m[1, 1] - m[0, 1] * m[1, 0]
  det = jnp.where(det != 0, 1.0 / det, 0.0)
  a = jnp.array([[m[1, 1] * det, -m[0, 1] * det], [-m[1, 0] * det, m[0, 0] * det]])
  b = -a @ m[:, 2]
  fixed = lambda v: jnp.round(v * 1024.0).astype(jnp.int32)  # cvRound: halves to even
  columns, rows = jnp.arange(w, dtype=jnp.float32), jnp.arange(h, dtype=jnp.float32)
  # AB_SCALE = 1024, then round_delta = 1024 / 32 / 2, then >> 5: coordinates in 32nds.
  x = (fixed(a[0, 1] * rows + b[0])[:, None] + 16 + fixed(a[0, 0] * columns)[None, :]) >> 5
  y = (fixed(a[1, 1] * rows + b[1])[:, None] + 16 + fixed(a[1, 0] * columns)[None, :]) >> 5
  x0, y0 = x >> 5, y >> 5
  fx, fy = ((x & 31) / 32.0)[..., None], ((y & 31) / 32.0)[..., None]
  pixel = lambda r, c: image[_reflect_101(r, h), _reflect_101(c, w)]
  return ((1 - fy) * ((1 - fx) * pixel(y0, x0) + fx * pixel(y0, x0 + 1))
          + fy * ((1 - fx) * pixel(y0 + 1, x0) + fx * pixel(y0 + 1, x0 + 1)))


def _reflect_coordinate(coordinate: jax.Array, n: int) -> jax.Array:
  # scipy.ndimage's "reflect" (half-sample symmetric) folding into [-0.5, n - 0.5].
  coordinate = jnp.mod(coordinate + 0.5, 2 * n) - 0.5
  return jnp.where(coordinate > n - 0.5, 2 * n - 1 - coordinate, coordinate)


def _map_coordinates(image: jax.Array, rows: jax.Array, cols: jax.Array) -> jax.Array:
  """scipy.ndimage.map_coordinates(order=1, mode="reflect") of [H, W, C] at [H, W] points."""
  h, w = image.shape[:2]
  rows, cols = _reflect_coordinate(rows, h), _reflect_coordinate(cols, w)
  r0, c0 = jnp.floor(rows), jnp.floor(cols)
  fr, fc = (rows - r0)[..., None], (cols - c0)[..., None]
  r0, c0 = r0.astype(jnp.int32), c0.astype(jnp.int32)
  pixel = lambda r, c: image[jnp.clip(r, 0, h - 1), jnp.clip(c, 0, w - 1)]
  return ((1 - fr) * ((1 - fc) * pixel(r0, c0) + fc * pixel(r0, c0 + 1))
          + fr * ((1 - fc) * pixel(r0 + 1, c0) + fc * pixel(r0 + 1, c0 + 1)))


def _elastic_apply(draws: tuple[jax.Array, jax.Array], image: jax.Array,
                   severity: int) -> jax.Array:
  """The reference's elastic transform: the affine warp taking its three points to them
  plus the drawn offsets (reflect-101 border), then each pixel read (order 1, mirrored
  border) at its place plus the displacement, the drawn noise smoothed by skimage's
  Gaussian (mode "reflect", truncate 3; exact however wide, as base.gaussian_matrix) and
  scaled."""
  scale, sigma, _ = _param("elastic_transform", severity, image.shape)
  offsets, noise = draws
  h, w = image.shape[:2]
  points = _affine_points(h, w)
  image = _warp_affine(image, points, points + offsets)
  smooth = base.separable(jnp.moveaxis(noise, 0, -1),
                          base.gaussian_matrix(h, sigma, "reflect", truncate=3.0),
                          base.gaussian_matrix(w, sigma, "reflect", truncate=3.0)) * scale
  rows = jnp.arange(h, dtype=jnp.float32)[:, None] + smooth[..., 1]
  cols = jnp.arange(w, dtype=jnp.float32)[None, :] + smooth[..., 0]
  return base.clip(_map_coordinates(image, rows, cols))


elastic_transform = base.RandomOp(_elastic_draws, _elastic_apply)

# ----------------------------------------------------------------------------- pixelate


def _box_resize_matrix(size_in: int, size_out: int) -> np.ndarray:
  # PIL's BOX resampling along one axis, as Resample.c's precompute_coeffs computes it in
  # double precision (window and filter both, as they decide ties): output i averages the
  # inputs x of its window with (x - centre + 0.5) / filterscale in (-0.5, 0.5], so that
  # upscaling is nearest-pixel.
  scale = size_in / size_out
  filterscale = max(scale, 1.0)
  support = 0.5 * filterscale
  weights = np.zeros((size_out, size_in))
  for i in range(size_out):
    centre = (i + 0.5) * scale
    lo = max(int(centre - support + 0.5), 0)
    hi = min(int(centre + support + 0.5), size_in)
    x = (np.arange(lo, hi) - centre + 0.5) * (1.0 / filterscale)
    weights[i, lo:hi] = (x > -0.5) & (x <= 0.5)
  return weights / weights.sum(axis=1, keepdims=True)


def pixelate(key: jax.Array, image: jax.Array, severity: int) -> jax.Array:
  """PIL BOX resize to int(c * size), then BOX back, as the reference; no key.

  Both resizes are exact matrices of PIL's BOX weights (its window and tie rules); PIL
  rounds to 8 bits after each of its passes (horizontal, vertical, for both resizes),
  this stays in float: within one level of PIL's output.
  """
  del key
  c = _param("pixelate", severity, image.shape)
  h, w = image.shape[:2]
  small_h, small_w = int(h * c), int(w * c)
  rows = _box_resize_matrix(small_h, h) @ _box_resize_matrix(h, small_h)
  cols = _box_resize_matrix(small_w, w) @ _box_resize_matrix(w, small_w)
  return base.clip(base.separable(image, rows, cols))


# ----------------------------------------------------------------------------- saturate


def _rgb_to_hsv(rgb: jax.Array) -> jax.Array:
  # skimage.color.rgb2hsv, whose later assignments win ties: blue's hue formula over
  # green's over red's; hue and saturation 0 where the channels are equal.
  r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
  value = rgb.max(axis=-1)
  delta = value - rgb.min(axis=-1)
  grey = delta == 0
  safe = jnp.where(grey, 1.0, delta)
  hue = jnp.where(b == value, 4.0 + (r - g) / safe,
                  jnp.where(g == value, 2.0 + (b - r) / safe, (g - b) / safe))
  hue = jnp.where(grey, 0.0, (hue / 6.0) % 1.0)
  saturation = jnp.where(grey, 0.0, delta / jnp.where(value == 0, 1.0, value))
  return jnp.stack([hue, saturation, value], axis=-1)


def _hsv_to_rgb(hsv: jax.Array) -> jax.Array:
  # skimage.color.hsv2rgb: the six sectors of the hue.
  h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
  sector = jnp.floor(h * 6.0)
  f = h * 6.0 - sector
  p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
  choices = jnp.stack([jnp.stack(c, axis=-1) for c in
                       ((v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q))])
  index = (sector.astype(jnp.int32) % 6)[None, ..., None]
  return jnp.take_along_axis(choices, index, axis=0)[0]


def saturate(key: jax.Array, image: jax.Array, severity: int) -> jax.Array:
  """HSV saturation s -> clip(s * a + b), through skimage's HSV round trip, as the
  reference; no key. One channel is the first channel of the grey RGB image it stands for
  (its red, the value, is the grey)."""
  del key
  scale, shift = _param("saturate", severity, image.shape)
  rgb = image if image.shape[-1] == 3 else jnp.repeat(image, 3, axis=-1)
  hsv = _rgb_to_hsv(rgb)
  hsv = hsv.at[..., 1].set(jnp.clip(hsv[..., 1] * scale + shift, 0.0, 1.0))
  return base.clip(_hsv_to_rgb(hsv))[..., :image.shape[-1]]
