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

Reference: TensorFlow's `models/official/efficientnet/autoaugment.py` in tensorflow/tpu
(read at commit 7dc921f846c9e4071f3884b768a7ddf521272a49), which serves both policies:
`distort_image_with_randaugment` and `distort_image_with_autoaugment` with `policy_v0`.
Its `level_to_arg` is followed for every op, with level l = M / 10 (M on the 0..10
scale, `_MAX_LEVEL` = 10) and s a random sign that TF draws for the geometric ops only:

  Rotate            30 l s degrees                  M=9: +-27 degrees
  ShearX, ShearY    0.3 l s                         M=9: +-0.27
  TranslateX, Y     see the deviation below         M=9: +-0.405 of the side
  Posterize         int(4 l) bits kept, shift 8-b   M=9: 3 bits kept (a shift of 5)
  Solarize          invert levels >= int(256 l)     M=9: levels >= 230 (M=10: none)
  SolarizeAdd       + int(110 l) to levels < 128    M=9: + 99 levels
  Color, Contrast,  factor 0.1 + 1.8 l, no sign     M=9: 1.72
  Brightness, Sharpness
  AutoContrast, Equalize, Invert, Identity: no magnitude.

"bits" is the number of most significant bits kept, in TF's `posterize` and here alike;
TF's uint8 shift kernel clamps shifts to 7, so its "0 bits" (l < 0.25) keeps the top bit,
and so does this mapping (PIL and timm give a black image there).

Deviations from the reference:
- Translate (the one deliberate change of magnitude): TF shifts by a constant number of
  pixels, 100 l for RandAugment and 250 l for AutoAugment, meant for ImageNet-size images
  (100 px is 0.45 of a 224 px side; 250 px exceeds it, so at l >= 0.9 a 224 px image
  becomes all fill). Here the shift is 0.45 l of the image side for both policies, so it
  means the same on 32 px CIFAR images: the AutoAugment paper's +-150 px on 331 px images
  (0.45) and timm's translate_const = 0.45 * size.
- RandAugment's op list has Identity where TF has Cutout (the RandAugment paper's list
  has Identity and no Cutout); the other 15 ops are TF's.
- Ops work on float images and do not round to uint8 after each op; warps are bilinear
  (TF: nearest); Contrast blends towards the mean luma as PIL does (TF's degenerate is
  the pixel count / 256, a bug), but unlike PIL does not round that mean to a level.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

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


# Half a level: a threshold T / 255 splits the 256 levels exactly as TF's uint8 `< T` does,
# although float32 level k / 255 may be an ulp either side of T / 255.
_HALF_LEVEL = 0.5 / 255.0


def solarize(img: jax.Array, threshold) -> jax.Array:
  """Invert pixels at or above `threshold`, as PIL and TF (256/255 = none, 0 = all)."""
  return jnp.where(img >= threshold - _HALF_LEVEL, 1.0 - img, img)


def solarize_add(img: jax.Array, addition, threshold=FILL) -> jax.Array:
  """Add `addition` to pixels below `threshold` (TF's SolarizeAdd)."""
  return jnp.where(img < threshold - _HALF_LEVEL, jnp.clip(img + addition, 0.0, 1.0), img)


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


# The one deliberate deviation from TF (module docstring): a fraction of the side, not pixels.
TRANSLATE_FRAC = 0.45


def _enhance(level):
  # TF's _enhance_level_to_arg: (M / 10) * 1.8 + 0.1, with no random sign.
  return 0.1 + 1.8 * level


def _bits(level):
  # TF: int(M / 10 * 4) bits kept; its uint8 shift kernel clamps a shift of 8 to 7, so
  # TF's 0 bits keeps the top bit.
  return jnp.maximum(jnp.floor(4.0 * level), 1.0)


# TF's level_to_arg for every op both policies use; l = level in [0, 1], s = sign.
OPS = {op.name: op for op in (
    _Op("Identity", colour=lambda x, l, s: x),
    _Op("AutoContrast", colour=lambda x, l, s: autocontrast(x)),
    _Op("Equalize", colour=lambda x, l, s: equalize(x)),
    _Op("Invert", colour=lambda x, l, s: invert(x)),
    _Op("Rotate", matrix=lambda l, s, h, w: _rotation(30.0 * l * s, h, w)),
    _Op("ShearX", matrix=lambda l, s, h, w: _shear(0.3 * l * s, 0)),
    _Op("ShearY", matrix=lambda l, s, h, w: _shear(0.3 * l * s, 1)),
    _Op("TranslateX", matrix=lambda l, s, h, w: _translation(TRANSLATE_FRAC * w * l * s, 0)),
    _Op("TranslateY", matrix=lambda l, s, h, w: _translation(TRANSLATE_FRAC * h * l * s, 1)),
    _Op("Posterize", colour=lambda x, l, s: posterize(x, _bits(l))),
    _Op("Solarize", colour=lambda x, l, s: solarize(x, jnp.floor(256.0 * l) / 255.0)),
    _Op("SolarizeAdd", colour=lambda x, l, s: solarize_add(x, jnp.floor(110.0 * l) / 255.0)),
    _Op("Color", colour=lambda x, l, s: color(x, _enhance(l))),
    _Op("Contrast", colour=lambda x, l, s: contrast(x, _enhance(l))),
    _Op("Brightness", colour=lambda x, l, s: brightness(x, _enhance(l))),
    _Op("Sharpness", colour=lambda x, l, s: sharpness(x, _enhance(l))),
)}

# TF's RandAugment ops with Identity in place of Cutout; Identity first (see apply_op).
RANDAUGMENT_OPS = tuple(OPS.values())

# TF's policy_v0, "used in AutoAugment Paper" for ImageNet (the one EfficientNet trained
# with; not the paper's appendix table): (op, probability, level 0..10) pairs.
AUTOAUGMENT_IMAGENET_POLICY = (
    (("Equalize", 0.8, 1), ("ShearY", 0.8, 4)),
    (("Color", 0.4, 9), ("Equalize", 0.6, 3)),
    (("Color", 0.4, 1), ("Rotate", 0.6, 8)),
    (("Solarize", 0.8, 3), ("Equalize", 0.4, 7)),
    (("Solarize", 0.4, 2), ("Solarize", 0.6, 2)),
    (("Color", 0.2, 0), ("Equalize", 0.8, 8)),
    (("Equalize", 0.4, 8), ("SolarizeAdd", 0.8, 3)),
    (("ShearX", 0.2, 9), ("Rotate", 0.6, 8)),
    (("Color", 0.6, 1), ("Equalize", 1.0, 2)),
    (("Invert", 0.4, 9), ("Rotate", 0.6, 0)),
    (("Equalize", 1.0, 9), ("ShearY", 0.6, 3)),
    (("Color", 0.4, 7), ("Equalize", 0.6, 0)),
    (("Posterize", 0.4, 6), ("AutoContrast", 0.4, 7)),
    (("Solarize", 0.6, 8), ("Color", 0.6, 9)),
    (("Solarize", 0.2, 4), ("Rotate", 0.8, 9)),
    (("Rotate", 1.0, 7), ("TranslateY", 0.8, 9)),
    (("ShearX", 0.0, 0), ("Solarize", 0.8, 4)),
    (("ShearY", 0.8, 0), ("Color", 0.6, 4)),
    (("Color", 1.0, 0), ("Rotate", 0.6, 2)),
    (("Equalize", 0.8, 4), ("Equalize", 0.0, 8)),
    (("Equalize", 1.0, 4), ("AutoContrast", 0.6, 2)),
    (("ShearY", 0.4, 7), ("SolarizeAdd", 0.6, 7)),
    (("Posterize", 0.8, 2), ("Solarize", 0.6, 10)),
    (("Solarize", 0.6, 8), ("Equalize", 0.6, 1)),
    (("Color", 0.8, 6), ("Rotate", 0.4, 5)),
)

# Only the ops the policy uses, so a step selects among 12 rather than 16; Identity first.
AUTOAUGMENT_OPS = (OPS["Identity"],) + tuple(
    op for name, op in OPS.items() if any(n == name for sub in AUTOAUGMENT_IMAGENET_POLICY
                                          for n, _, _ in sub))


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
  """One random sub-policy of TF's policy_v0; each of its two ops fires with its p."""
  ops, probs, levels = _policy_tables()
  u = jax.random.uniform(key, (5,))
  sub = jnp.minimum(jnp.floor(u[0] * len(ops)), len(ops) - 1).astype(jnp.int32)
  fire = u[1:3] < jnp.asarray(probs)[sub]
  signs = jnp.where(u[3:] < 0.5, 1.0, -1.0)
  for j in range(2):
    index = jnp.where(fire[j], jnp.asarray(ops)[sub, j], 0)  # 0 = Identity
    img = apply_op(AUTOAUGMENT_OPS, index, img, jnp.asarray(levels)[sub, j], signs[j])
  return img
