"""RandAugment and AutoAugment on the device, with the image ops they draw from.

Every op takes one float32 image [H, W, C] in [0, 1] and returns the same shape, dtype and
range. Colour ops that need colour (color) treat C=1 as already grey; the rest are
per-channel. Geometric ops are affine warps: output pixels are mapped back to source
coordinates, sampled bilinearly, and filled with grey 128/255 outside the image as the
TF implementations do.

A policy step is one of a fixed list of ops chosen per image by a traced index, so a
whole batch runs under `jax.vmap`. The geometric ops are expressed as matrices rather than
images: a step picks one matrix (identity for colour ops) and warps once, instead of
computing every warp and selecting, which is what `lax.switch` does under `vmap`.

Magnitudes are `level` in [0, 1] (M / 10 on the usual 0..10 scale) and a random `sign`.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

FILL = 128.0 / 255.0
_LUMA = (0.299, 0.587, 0.114)  # ITU-R 601, as PIL's convert("L") and torchvision


# ---------------------------------------------------------------------------- helpers


def luminance(img: jax.Array) -> jax.Array:
  """[H, W, 1] luma; a single-channel image is its own luma."""
  if img.shape[-1] == 1:
    return img
  return jnp.tensordot(img, jnp.asarray(_LUMA, img.dtype), axes=1)[..., None]


def blend(degenerate: jax.Array, img: jax.Array, factor) -> jax.Array:
  """PIL ImageEnhance: factor 0 gives `degenerate`, 1 the image, >1 extrapolates."""
  return jnp.clip(degenerate + factor * (img - degenerate), 0.0, 1.0)


def _to_uint8_levels(img: jax.Array) -> jax.Array:
  # Histogram and bit ops are defined on the 256 levels the image came from.
  return jnp.round(img * 255.0).astype(jnp.int32)


# ------------------------------------------------------------------------ colour ops


def identity(img: jax.Array) -> jax.Array:
  """The image unchanged."""
  return img


def invert(img: jax.Array) -> jax.Array:
  """Negative: 1 - x."""
  return 1.0 - img


def autocontrast(img: jax.Array) -> jax.Array:
  """Stretch each channel to [0, 1]; a flat channel is left alone."""
  lo = img.min(axis=(0, 1))
  hi = img.max(axis=(0, 1))
  flat = hi <= lo
  scale = jnp.where(flat, 1.0, 1.0 / jnp.where(flat, 1.0, hi - lo))
  return jnp.clip((img - jnp.where(flat, 0.0, lo)) * scale, 0.0, 1.0)


def _equalize_channel(levels: jax.Array) -> jax.Array:
  # PIL's ImageOps.equalize, as ported to TF: the lookup table skips the last non-empty
  # bin so the brightest level maps to 255.
  histo = jnp.bincount(levels.ravel(), length=256)
  last_nonzero = histo[255 - jnp.argmax(histo[::-1] > 0)]
  step = (levels.size - last_nonzero) // 255
  lut = (jnp.cumsum(histo) + step // 2) // jnp.maximum(step, 1)
  lut = jnp.clip(jnp.concatenate([jnp.zeros(1, lut.dtype), lut[:-1]]), 0, 255)
  return jnp.where(step == 0, levels, lut[levels])


def equalize(img: jax.Array) -> jax.Array:
  """Per-channel histogram equalisation on the 256 intensity levels."""
  levels = jax.vmap(_equalize_channel, in_axes=-1, out_axes=-1)(_to_uint8_levels(img))
  return levels.astype(jnp.float32) / 255.0


def posterize(img: jax.Array, bits) -> jax.Array:
  """Keep the `bits` most significant bits of each 8-bit level (8 = unchanged)."""
  shift = 8 - jnp.clip(jnp.asarray(bits, jnp.int32), 0, 8)
  levels = (_to_uint8_levels(img) >> shift) << shift
  return jnp.where(shift == 0, img, levels.astype(jnp.float32) / 255.0)


def solarize(img: jax.Array, threshold) -> jax.Array:
  """Invert pixels above `threshold` (1 = unchanged, 0 = invert all but black)."""
  return jnp.where(img > threshold, 1.0 - img, img)


def solarize_add(img: jax.Array, addition, threshold=FILL) -> jax.Array:
  """Add `addition` to pixels below `threshold` (TF's SolarizeAdd)."""
  return jnp.where(img < threshold, jnp.clip(img + addition, 0.0, 1.0), img)


def color(img: jax.Array, factor) -> jax.Array:
  """Saturation: 0 grey, 1 unchanged."""
  return blend(luminance(img), img, factor)


def contrast(img: jax.Array, factor) -> jax.Array:
  """0 gives the mean grey level everywhere, 1 unchanged."""
  return blend(jnp.mean(luminance(img)), img, factor)


def brightness(img: jax.Array, factor) -> jax.Array:
  """0 black, 1 unchanged."""
  return blend(jnp.zeros((), img.dtype), img, factor)


def sharpness(img: jax.Array, factor) -> jax.Array:
  """0 smoothed with PIL's SMOOTH kernel (border pixels kept), 1 unchanged."""
  h, w = img.shape[:2]
  padded = jnp.pad(img, ((1, 1), (1, 1), (0, 0)))
  taps = sum(padded[dy:dy + h, dx:dx + w] for dy in range(3) for dx in range(3))
  smooth = (taps + 4.0 * img) / 13.0  # kernel [[1,1,1],[1,5,1],[1,1,1]] / 13
  rows = jnp.arange(h)[:, None, None]
  cols = jnp.arange(w)[None, :, None]
  interior = (rows > 0) & (rows < h - 1) & (cols > 0) & (cols < w - 1)
  return blend(jnp.where(interior, smooth, img), img, factor)


# --------------------------------------------------------------------- geometric ops
# A matrix is [2, 3]: source (x, y) = matrix @ (x_out, y_out, 1), x = column, y = row.


def affine_warp(img: jax.Array, matrix: jax.Array, fill: float = FILL) -> jax.Array:
  """Bilinear inverse-mapped warp; source pixels outside the image read as `fill`."""
  img = jnp.asarray(img)  # NumPy images cannot be indexed by traced coordinates
  h, w = img.shape[:2]
  ys, xs = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32),
                        indexing="ij")
  sx = matrix[0, 0] * xs + matrix[0, 1] * ys + matrix[0, 2]
  sy = matrix[1, 0] * xs + matrix[1, 1] * ys + matrix[1, 2]
  x0, y0 = jnp.floor(sx), jnp.floor(sy)
  fx, fy = (sx - x0)[..., None], (sy - y0)[..., None]
  x0, y0 = x0.astype(jnp.int32), y0.astype(jnp.int32)

  def tap(yi, xi):
    inside = ((yi >= 0) & (yi < h) & (xi >= 0) & (xi < w))[..., None]
    return jnp.where(inside, img[jnp.clip(yi, 0, h - 1), jnp.clip(xi, 0, w - 1)], fill)

  top = (1 - fx) * tap(y0, x0) + fx * tap(y0, x0 + 1)
  bottom = (1 - fx) * tap(y0 + 1, x0) + fx * tap(y0 + 1, x0 + 1)
  return jnp.clip((1 - fy) * top + fy * bottom, 0.0, 1.0)


def _identity_matrix() -> jax.Array:
  return jnp.eye(2, 3, dtype=jnp.float32)


def _rotation(degrees, h: int, w: int) -> jax.Array:
  # Counter-clockwise on screen (rows grow downwards) about the image centre, like PIL.
  t = jnp.deg2rad(jnp.asarray(degrees, jnp.float32))
  cos, sin = jnp.cos(t), jnp.sin(t)
  cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
  return jnp.stack([
      jnp.stack([cos, -sin, cx - cos * cx + sin * cy]),
      jnp.stack([sin, cos, cy - sin * cx - cos * cy]),
  ])


def _shear(factor, axis: int) -> jax.Array:
  # About the top-left corner, as TF and PIL: source x = x + factor * y for shear x.
  m = jnp.zeros((2, 3), jnp.float32).at[0, 0].set(1.0).at[1, 1].set(1.0)
  return m.at[axis, 1 - axis].set(jnp.asarray(factor, jnp.float32))


def _translation(pixels, axis: int) -> jax.Array:
  # Positive pixels move the content right (x) or down (y).
  return _identity_matrix().at[axis, 2].set(-jnp.asarray(pixels, jnp.float32))


def rotate(img: jax.Array, degrees) -> jax.Array:
  """Rotate about the centre by `degrees` (counter-clockwise), grey fill."""
  return affine_warp(img, _rotation(degrees, *img.shape[:2]))


def shear_x(img: jax.Array, factor) -> jax.Array:
  """Shear along x: source x = x + factor * y (about the top-left corner), grey fill."""
  return affine_warp(img, _shear(factor, 0))


def shear_y(img: jax.Array, factor) -> jax.Array:
  """Shear along y: source y = y + factor * x (about the top-left corner), grey fill."""
  return affine_warp(img, _shear(factor, 1))


def translate_x(img: jax.Array, pixels) -> jax.Array:
  """Shift right by `pixels`, grey fill."""
  return affine_warp(img, _translation(pixels, 0))


def translate_y(img: jax.Array, pixels) -> jax.Array:
  """Shift down by `pixels`, grey fill."""
  return affine_warp(img, _translation(pixels, 1))


# -------------------------------------------------------------------------- policies


class _Op(NamedTuple):
  """One policy op: a colour function (img, level, sign) or a matrix (level, sign, h, w)."""
  name: str
  colour: Callable | None = None
  matrix: Callable | None = None


def _geometric_ops(translate_frac: float = 0.45) -> tuple[_Op, ...]:
  # Ranges of TF/timm at level 1: 30 degrees, shear 0.3, 45% of the image side.
  return (
      _Op("Rotate", matrix=lambda l, s, h, w: _rotation(30.0 * l * s, h, w)),
      _Op("ShearX", matrix=lambda l, s, h, w: _shear(0.3 * l * s, 0)),
      _Op("ShearY", matrix=lambda l, s, h, w: _shear(0.3 * l * s, 1)),
      _Op("TranslateX", matrix=lambda l, s, h, w: _translation(translate_frac * w * l * s, 0)),
      _Op("TranslateY", matrix=lambda l, s, h, w: _translation(translate_frac * h * l * s, 1)),
  )


def _fixed_ops() -> tuple[_Op, ...]:
  return (
      _Op("Identity", colour=lambda x, l, s: x),
      _Op("AutoContrast", colour=lambda x, l, s: autocontrast(x)),
      _Op("Equalize", colour=lambda x, l, s: equalize(x)),
      _Op("Invert", colour=lambda x, l, s: invert(x)),
  )


# RandAugment with timm's "increasing" magnitudes (rand-m9-inc1; torchvision's too): level
# 0 is the identity for every op that has a magnitude, and strength grows with the level.
RANDAUGMENT_OPS = _fixed_ops() + _geometric_ops() + (
    _Op("Posterize", colour=lambda x, l, s: posterize(x, 8 - jnp.round(4 * l))),
    _Op("Solarize", colour=lambda x, l, s: solarize(x, 1.0 - l)),
    _Op("SolarizeAdd", colour=lambda x, l, s: solarize_add(x, 110.0 / 255.0 * l)),
    _Op("Color", colour=lambda x, l, s: color(x, 1.0 + 0.9 * l * s)),
    _Op("Contrast", colour=lambda x, l, s: contrast(x, 1.0 + 0.9 * l * s)),
    _Op("Brightness", colour=lambda x, l, s: brightness(x, 1.0 + 0.9 * l * s)),
    _Op("Sharpness", colour=lambda x, l, s: sharpness(x, 1.0 + 0.9 * l * s)),
)

# AutoAugment keeps the magnitudes its policy was searched with (TF / timm "original"):
# enhance factors 0.1 + 1.8 * level, solarize threshold = level, posterize 4..8 bits.
AUTOAUGMENT_OPS = _fixed_ops() + _geometric_ops()[:2] + (
    _Op("Posterize", colour=lambda x, l, s: posterize(x, 4 + jnp.floor(4 * l))),
    _Op("Solarize", colour=lambda x, l, s: solarize(x, l)),
    _Op("Color", colour=lambda x, l, s: color(x, 0.1 + 1.8 * l)),
    _Op("Contrast", colour=lambda x, l, s: contrast(x, 0.1 + 1.8 * l)),
    _Op("Sharpness", colour=lambda x, l, s: sharpness(x, 0.1 + 1.8 * l)),
)

# The ImageNet policy of Cubuk et al. 2019 (Table 9): (op, probability, magnitude 0..9).
AUTOAUGMENT_IMAGENET_POLICY = (
    (("Posterize", 0.4, 8), ("Rotate", 0.6, 9)),
    (("Solarize", 0.6, 5), ("AutoContrast", 0.6, 5)),
    (("Equalize", 0.8, 8), ("Equalize", 0.6, 3)),
    (("Posterize", 0.6, 7), ("Posterize", 0.6, 6)),
    (("Equalize", 0.4, 7), ("Solarize", 0.2, 4)),
    (("Equalize", 0.4, 4), ("Rotate", 0.8, 8)),
    (("Solarize", 0.6, 3), ("Equalize", 0.6, 7)),
    (("Posterize", 0.8, 5), ("Equalize", 1.0, 2)),
    (("Rotate", 0.2, 3), ("Solarize", 0.6, 8)),
    (("Equalize", 0.6, 8), ("Posterize", 0.4, 6)),
    (("Rotate", 0.8, 8), ("Color", 0.4, 0)),
    (("Rotate", 0.4, 9), ("Equalize", 0.6, 2)),
    (("Equalize", 0.0, 7), ("Equalize", 0.8, 8)),
    (("Invert", 0.6, 4), ("Equalize", 1.0, 8)),
    (("Color", 0.6, 4), ("Contrast", 1.0, 8)),
    (("Rotate", 0.8, 8), ("Color", 1.0, 2)),
    (("Color", 0.8, 8), ("Solarize", 0.8, 7)),
    (("Sharpness", 0.4, 7), ("Invert", 0.6, 8)),
    (("ShearX", 0.6, 5), ("Equalize", 1.0, 9)),
    (("Color", 0.4, 0), ("Equalize", 0.6, 3)),
    (("Equalize", 0.4, 7), ("Solarize", 0.2, 4)),
    (("Solarize", 0.6, 5), ("AutoContrast", 0.6, 5)),
    (("Invert", 0.6, 4), ("Equalize", 1.0, 8)),
    (("Color", 0.6, 4), ("Contrast", 1.0, 8)),
    (("Equalize", 0.8, 8), ("Equalize", 0.6, 3)),
)


def apply_op(ops: tuple[_Op, ...], index, img: jax.Array, level, sign) -> jax.Array:
  """Apply ops[index] (a traced index) with one warp and one switch over colour ops."""
  h, w = img.shape[:2]
  matrices = jnp.stack([
      op.matrix(level, sign, h, w) if op.matrix else _identity_matrix() for op in ops])
  colour_ops = [op.colour for op in ops if op.colour]
  # Geometric ops take colour branch 0, which is Identity (ops[0] in both op lists).
  branch = np.array([colour_ops.index(op.colour) if op.colour else 0 for op in ops])
  img = affine_warp(img, matrices[index])
  return jax.lax.switch(jnp.asarray(branch)[index], colour_ops, img, level, sign)


def randaugment(key: jax.Array, img: jax.Array, num_ops: int, magnitude: float) -> jax.Array:
  """`num_ops` uniformly chosen ops, each at `magnitude` on the 0..10 scale, random sign."""
  level = jnp.float32(magnitude / 10.0)
  u = jax.random.uniform(key, (num_ops, 2))
  indices = jnp.minimum(jnp.floor(u[:, 0] * len(RANDAUGMENT_OPS)), len(RANDAUGMENT_OPS) - 1)
  signs = jnp.where(u[:, 1] < 0.5, 1.0, -1.0)
  for i in range(num_ops):
    img = apply_op(RANDAUGMENT_OPS, indices[i].astype(jnp.int32), img, level, signs[i])
  return img


def _policy_tables():
  names = [op.name for op in AUTOAUGMENT_OPS]
  ops = np.array([[names.index(n) for n, _, _ in sub] for sub in AUTOAUGMENT_IMAGENET_POLICY])
  probs = np.array([[p for _, p, _ in sub] for sub in AUTOAUGMENT_IMAGENET_POLICY], np.float32)
  levels = np.array([[m for _, _, m in sub] for sub in AUTOAUGMENT_IMAGENET_POLICY], np.float32)
  return ops, probs, levels / 10.0


def autoaugment(key: jax.Array, img: jax.Array) -> jax.Array:
  """One random sub-policy of the ImageNet policy; each of its two ops fires with its p."""
  ops, probs, levels = _policy_tables()
  u = jax.random.uniform(key, (5,))
  sub = jnp.minimum(jnp.floor(u[0] * len(ops)), len(ops) - 1).astype(jnp.int32)
  fire = u[1:3] < jnp.asarray(probs)[sub]
  signs = jnp.where(u[3:] < 0.5, 1.0, -1.0)
  for j in range(2):
    index = jnp.where(fire[j], jnp.asarray(ops)[sub, j], 0)  # 0 = Identity
    img = apply_op(AUTOAUGMENT_OPS, index, img, jnp.asarray(levels)[sub, j], signs[j])
  return img
