"""Training augmentation on the device, inside the jitted step.

`make_train_augment` turns a uint8 batch [B, H, W, C] into V normalised float32 views
[B, V, H, W, C]. Each image and view gets its own key, so views are independent and the
whole batch is a deterministic function of one key; ops act on one float32 image
[H, W, C] in [0, 1] and are batched with `jax.vmap`, so there are no Python loops over
images and nothing waits on the host. It is `view_inputs` (a key per view, the views'
uint8 images) followed by `make_view_augment`'s function, which works row by row: the
training step applies it chunk by chunk with the encoder (models/chunked.py), so the float
views of a big batch never exist all at once.

Policies: simaugment (SimCLR / SupCon: crop, flip, colour jitter, grayscale, optional
blur), randaugment and autoaugment (crop, flip, then the policy; see augment_policies for
the TF reference their magnitudes follow), cropflip (crop and flip, for linear evaluation)
and none. Every policy but none flips with probability `flip_prob`.
"""

from __future__ import annotations

import math
import types
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

# The policy ops are part of this module's public API.
from supcon_jax.augment_policies import (  # noqa: F401
  affine_warp,
  autoaugment,
  autocontrast,
  brightness,
  color,
  contrast,
  equalize,
  identity,
  invert,
  luminance,
  posterize,
  randaugment,
  rotate,
  sharpness,
  shear_x,
  shear_y,
  solarize,
  solarize_add,
  translate_x,
  translate_y,
)
from supcon_jax.checks import one_of

POLICIES = ("simaugment", "randaugment", "autoaugment", "cropflip", "none")
ViewFn = Callable[[jax.Array, jax.Array], jax.Array]

# ------------------------------------------------------------------ random resized crop


def _interp_axis(img: jax.Array, axis: int, start, length, size: int | None = None
                 ) -> jax.Array:
  # Linear resampling of pixels [start, start + length) onto `size` pixels (the whole axis by
  # default): half-pixel centres, clamped to the box (torchvision: crop, then resize with
  # align_corners=False).
  n = img.shape[axis]
  size = size or n
  src = start + (jnp.arange(size, dtype=jnp.float32) + 0.5) * (length / size) - 0.5
  src = jnp.clip(src, start, start + length - 1.0)
  lo = jnp.floor(src).astype(jnp.int32)
  hi = jnp.minimum(lo + 1, n - 1)
  frac = jnp.expand_dims(src - lo, tuple(range(1, img.ndim - axis)))
  return (1 - frac) * jnp.take(img, lo, axis=axis) + frac * jnp.take(img, hi, axis=axis)


def resized_crop(img: jax.Array, top, left, height, width, size: int | None = None
                 ) -> jax.Array:
  """Crop the box and resize it bilinearly to size x size (default: back to the image size,
  never a downscale; multi-crop's small views are mostly enlarged too)."""
  img = _interp_axis(img, 0, jnp.float32(top), jnp.float32(height), size)
  return _interp_axis(img, 1, jnp.float32(left), jnp.float32(width), size)


def _fallback_box(h: int, w: int, ratio: tuple[float, float]) -> tuple[int, int]:
  # torchvision: the whole image, narrowed to the nearest allowed aspect ratio.
  if w / h < min(ratio):
    return int(round(w / min(ratio))), w
  if w / h > max(ratio):
    return h, int(round(h * max(ratio)))
  return h, w


def random_resized_crop(key: jax.Array, img: jax.Array, scale=(0.08, 1.0),
                        ratio=(3 / 4, 4 / 3), attempts: int = 10, size: int | None = None
                        ) -> jax.Array:
  """torchvision's RandomResizedCrop: area fraction ~ U(scale), log aspect ~ U(log ratio),
  resized to size x size (default: the image's size).

  The first of `attempts` sampled boxes that fits is used (all are drawn at once, no
  loop); if none fits, the centred fallback box.
  """
  h, w = img.shape[:2]
  # One draw for everything: each random call is a separate threefry kernel to compile.
  u = jax.random.uniform(key, (2 * attempts + 2,))
  area = h * w * (scale[0] + (scale[1] - scale[0]) * u[:attempts])
  log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
  aspect = jnp.exp(log_lo + (log_hi - log_lo) * u[attempts:2 * attempts])
  cw = jnp.round(jnp.sqrt(area * aspect)).astype(jnp.int32)
  ch = jnp.round(jnp.sqrt(area / aspect)).astype(jnp.int32)
  fits = (cw > 0) & (cw <= w) & (ch > 0) & (ch <= h)
  first = jnp.argmax(fits)
  fh, fw = _fallback_box(h, w, ratio)
  found = fits.any()
  ch = jnp.where(found, ch[first], fh)
  cw = jnp.where(found, cw[first], fw)

  def offset(u, room):  # uniform integer in [0, room]; the centre when nothing fitted
    return jnp.where(found, jnp.minimum(jnp.floor(u * (room + 1)), room), room // 2)

  top, left = offset(u[-2], h - ch), offset(u[-1], w - cw)
  return resized_crop(img, top, left, ch, cw, size)


# ------------------------------------------------------------------------- flip, grey


def flip(img: jax.Array) -> jax.Array:
  """Mirror left-right."""
  return img[:, ::-1]


def grayscale(img: jax.Array) -> jax.Array:
  """Luma in every channel (C=1 is returned unchanged)."""
  return jnp.broadcast_to(luminance(img), img.shape)


def random_apply(key: jax.Array, p: float, fn: Callable[[jax.Array], jax.Array],
                 img: jax.Array) -> jax.Array:
  """fn(img) with probability p; p is static so p=0 and p=1 cost nothing extra."""
  if p <= 0:
    return img
  if p >= 1:
    return fn(img)
  return jnp.where(jax.random.bernoulli(key, p), fn(img), img)


def random_flip(key: jax.Array, img: jax.Array, p: float = 0.5) -> jax.Array:
  """Mirror left-right with probability p."""
  return random_apply(key, p, flip, img)


# ---------------------------------------------------------------------- colour jitter


def _rgb_to_hsv(img: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  r, g, b = img[..., 0], img[..., 1], img[..., 2]
  maxc, minc = img.max(-1), img.min(-1)
  grey = maxc == minc
  delta = jnp.where(grey, 1.0, maxc - minc)  # avoids 0/0 where hue is undefined
  s = jnp.where(grey, 0.0, (maxc - minc) / jnp.where(grey, 1.0, maxc))
  rc, gc, bc = (maxc - r) / delta, (maxc - g) / delta, (maxc - b) / delta
  hue = jnp.where(maxc == r, bc - gc, jnp.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
  hue = jnp.where(grey, 0.0, jnp.mod(hue / 6.0, 1.0))
  return hue, s, maxc


def _hsv_to_rgb(h: jax.Array, s: jax.Array, v: jax.Array) -> jax.Array:
  sector = jnp.floor(h * 6.0)
  f = h * 6.0 - sector
  sector = sector.astype(jnp.int32) % 6
  p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
  # Channel values for the six hue sectors, as colorsys.hsv_to_rgb.
  table = jnp.stack([
      jnp.stack([v, q, p, p, t, v]),
      jnp.stack([t, v, v, q, p, p]),
      jnp.stack([p, p, t, v, v, q]),
  ])  # [3 channels, 6 sectors, H, W]
  rgb = jnp.take_along_axis(table, sector[None, None], axis=1)[:, 0]
  return jnp.clip(jnp.moveaxis(rgb, 0, -1), 0.0, 1.0)


def adjust_hue(img: jax.Array, shift) -> jax.Array:
  """Rotate hue by `shift` turns (in [-0.5, 0.5]); RGB only, other C unchanged."""
  if img.shape[-1] != 3:
    return img
  h, s, v = _rgb_to_hsv(img)
  return _hsv_to_rgb(jnp.mod(h + shift, 1.0), s, v)


def color_jitter(key: jax.Array, img: jax.Array, strength_b: float = 0.4,
                 strength_c: float = 0.4, strength_s: float = 0.4,
                 strength_h: float = 0.1) -> jax.Array:
  """torchvision ColorJitter: factors ~ U[max(0, 1-s), 1+s], hue ~ U[-h, h], random order."""
  u = jax.random.uniform(key, (8,))

  def factor(u, s):
    lo = max(0.0, 1.0 - s)
    return lo + (1.0 + s - lo) * u

  b, c, s = factor(u[0], strength_b), factor(u[1], strength_c), factor(u[2], strength_s)
  h = strength_h * (2.0 * u[3] - 1.0)
  branches = (lambda x: brightness(x, b), lambda x: contrast(x, c),
              lambda x: color(x, s), lambda x: adjust_hue(x, h))
  order = jnp.argsort(u[4:])  # a uniformly random permutation
  for i in range(len(branches)):  # four static steps, not a loop over images
    img = jax.lax.switch(order[i], branches, img)
  return img


# ---------------------------------------------------------------------------- blur


def gaussian_blur(img: jax.Array, sigma, kernel_size: int | None = None) -> jax.Array:
  """Separable Gaussian blur, reflect-padded; kernel ~10% of the side as in SimCLR."""
  h, w = img.shape[:2]
  radius = (kernel_size or min(h, w) // 10) // 2
  offsets = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
  weights = jnp.exp(-offsets**2 / (2.0 * jnp.square(sigma)))
  weights = weights / weights.sum()

  def blur_axis(x, axis):
    n = x.shape[axis]
    pad = [(0, 0)] * x.ndim
    pad[axis] = (radius, radius)
    padded = jnp.pad(x, pad, mode="reflect")
    return sum(weights[k] * jax.lax.slice_in_dim(padded, k, k + n, axis=axis)
               for k in range(2 * radius + 1))

  return jnp.clip(blur_axis(blur_axis(img, 0), 1), 0.0, 1.0)


def random_gaussian_blur(key: jax.Array, img: jax.Array,
                         sigma_range: tuple[float, float] = (0.1, 2.0)) -> jax.Array:
  """Gaussian blur with sigma ~ U(sigma_range), as SimCLR."""
  sigma = jax.random.uniform(key, minval=sigma_range[0], maxval=sigma_range[1])
  return gaussian_blur(img, sigma)


# ----------------------------------------------------------------------------- views


def _crop_flip_view(cfg, size: int | None) -> ViewFn:
  scale, flip_p = tuple(cfg.crop_scale), float(cfg.flip_prob)
  # No crop: the host has already cropped this view, to its size.
  whole = scale == (1.0, 1.0) and size is None

  def view(key, img):
    # The flip key is split off even when flip_p is 0, so other keys do not depend on it.
    k_crop, k_flip = jax.random.split(key)
    crop = img if whole else random_resized_crop(k_crop, img, scale, size=size)
    return random_flip(k_flip, crop, flip_p)
  return view


def _simaugment_view(cfg, size: int | None) -> ViewFn:
  crop_flip = _crop_flip_view(cfg, size)
  s = float(cfg.jitter)
  jitter_p, grey_p, blur_p = float(cfg.jitter_prob), float(cfg.grayscale_prob), float(cfg.blur_prob)

  def view(key, img):
    k_geo, k_jitter_p, k_jitter, k_grey, k_blur_p, k_blur = jax.random.split(key, 6)
    img = crop_flip(k_geo, img)
    img = random_apply(k_jitter_p, jitter_p, lambda x: color_jitter(k_jitter, x, s, s, s, s / 4),
                       img)
    img = random_apply(k_grey, grey_p, grayscale, img)
    return random_apply(k_blur_p, blur_p, lambda x: random_gaussian_blur(k_blur, x), img)
  return view


def _policy_view(cfg, size: int | None,
                 policy: Callable[[jax.Array, jax.Array], jax.Array]) -> ViewFn:
  # As the SupCon reference: random-resized crop and flip first, then the policy.
  crop_flip = _crop_flip_view(cfg, size)

  def view(key, img):
    k_geo, k_policy = jax.random.split(key)
    return policy(k_policy, crop_flip(k_geo, img))
  return view


def _make_view(cfg, size: int | None) -> ViewFn | None:
  if cfg.policy == "simaugment":
    return _simaugment_view(cfg, size)
  if cfg.policy == "randaugment":
    num_ops, magnitude = int(cfg.ra_num_ops), float(cfg.ra_magnitude)
    return _policy_view(cfg, size, lambda k, x: randaugment(k, x, num_ops, magnitude))
  if cfg.policy == "autoaugment":
    return _policy_view(cfg, size, autoaugment)
  if cfg.policy == "cropflip":
    return _crop_flip_view(cfg, size)
  return None  # "none"


# ------------------------------------------------------------------- checks, normalise


def check_config(cfg: Any, name: str = "augment") -> None:
  """ValueError naming the field (`name`.field) of the first bad value of an `augment` block."""
  def fail(field, value, expected):
    raise ValueError(f"{name}.{field}={value!r}: expected {expected}")

  one_of(f"{name}.policy", cfg.policy, POLICIES)
  if not isinstance(cfg.n_views, int) or cfg.n_views < 1:
    fail("n_views", cfg.n_views, "an integer >= 1")
  check_scale(f"{name}.crop_scale", cfg.crop_scale)
  for field in ("flip_prob", "jitter_prob", "grayscale_prob", "blur_prob"):
    if not 0 <= getattr(cfg, field) <= 1:
      fail(field, getattr(cfg, field), "a probability in [0, 1]")
  if not 0 <= cfg.jitter <= 2:
    fail("jitter", cfg.jitter, "a strength in [0, 2] (hue = jitter / 4 <= 0.5)")
  if not isinstance(cfg.ra_num_ops, int) or cfg.ra_num_ops < 0:
    fail("ra_num_ops", cfg.ra_num_ops, "an integer >= 0")
  if not 0 <= cfg.ra_magnitude <= 10:
    fail("ra_magnitude", cfg.ra_magnitude, "a magnitude in [0, 10]")
  small = getattr(cfg, "small_views", 0)  # the linear stage's augment block has none
  if not isinstance(small, int) or small < 0:
    fail("small_views", small, "an integer >= 0")
  if small:
    if cfg.policy == "none":
      fail("policy", cfg.policy, "a cropping policy with small_views (multi-crop)")
    check_scale(f"{name}.small_crop_scale", cfg.small_crop_scale)
    if not isinstance(cfg.small_size, int) or cfg.small_size < 1:
      fail("small_size", cfg.small_size, "a side in pixels >= 1")


def check_scale(name: str, value: Any) -> None:
  """ValueError naming `name` unless `value` is a random-resized crop's area range (lo, hi)."""
  lo_hi = tuple(value)
  if len(lo_hi) != 2 or not 0 < lo_hi[0] <= lo_hi[1] <= 1:
    raise ValueError(f"{name}={value!r}: expected (lo, hi) with 0 < lo <= hi <= 1")


def normaliser(mean: Sequence[float],
               std: Sequence[float]) -> Callable[[jax.Array], jax.Array]:
  """fn(float images in [0, 1]) -> (images - mean) / std, per channel; checks mean and std."""
  # NumPy, not jax arrays: constants folded into the jitted step, on no particular device.
  mean = np.asarray(mean, np.float32)
  std = np.asarray(std, np.float32)
  if mean.ndim != 1 or mean.shape != std.shape:
    raise ValueError(f"mean {mean.shape} and std {std.shape} must be equal-length vectors")
  if not (std > 0).all():
    raise ValueError(f"std={std.tolist()} must be positive")
  return lambda x: (x - mean) / std


def _to_unit_float(images: jax.Array, channels: int) -> jax.Array:
  if images.ndim != 4 or images.dtype != jnp.uint8 or images.shape[-1] != channels:
    raise ValueError(f"images must be uint8 [N, H, W, {channels}] (one channel per mean "
                     f"entry), got {images.dtype} {images.shape}")
  return images.astype(jnp.float32) * (1.0 / 255.0)  # the one uint8 -> float conversion


# ------------------------------------------------------------------------ public API


def make_view_augment(augment_config, *, mean: Sequence[float], std: Sequence[float],
                      size: int | None = None) -> Callable[[jax.Array, jax.Array], jax.Array]:
  """fn(keys [N], uint8 [N, H, W, C]) -> normalised float32 [N, H, W, C]: one view of each
  image, drawn with its own key. Row by row: a subset of the rows gives those rows of the
  whole (what lets the training step augment chunk by chunk). `size`: the side the crop is
  resized to (None: the images' own)."""
  check_config(augment_config)
  view = _make_view(augment_config, size)
  normalise = normaliser(mean, std)
  channels = len(mean)

  def augment_views(keys: jax.Array, images: jax.Array) -> jax.Array:
    x = _to_unit_float(images, channels)
    return normalise(x if view is None else jax.vmap(view)(keys, x))

  return augment_views


def view_inputs(rng: jax.Array, images: jax.Array,
                n_views: int) -> tuple[jax.Array, jax.Array]:
  """(keys [B * V], uint8 images [B * V, H, W, C]): the V views of each image of a batch, as
  `make_view_augment`'s function takes them; view v of image b is row b * V + v, its key
  `jax.random.split(rng, (B, V))[b, v]`. Images [B, V, H, W, C] (each view already cropped
  on the host) give their own views; images [B, H, W, C] are repeated V times."""
  if images.ndim not in (4, 5):
    raise ValueError(f"images must be uint8 [B, H, W, C] or [B, V, H, W, C], got "
                     f"{images.dtype} {images.shape}")
  if images.ndim == 5 and images.shape[1] != n_views:
    raise ValueError(f"images hold {images.shape[1]} views per image; augment.n_views={n_views}")
  b = images.shape[0]
  keys = jax.random.split(rng, (b, n_views))
  if images.ndim == 4:
    images = jnp.broadcast_to(images[:, None], (b, n_views) + images.shape[1:])
  flat = lambda a: a.reshape((b * n_views,) + a.shape[2:])
  return flat(keys), flat(images)


def make_train_augment(augment_config, *, mean: Sequence[float],
                       std: Sequence[float]) -> Callable[[jax.Array, jax.Array], jax.Array]:
  """fn(rng, uint8 [B, H, W, C]) -> normalised float32 views [B, V, H, W, C].

  Images [B, V, H, W, C] (each view already cropped on the host) get one view each.
  """
  augment_views = make_view_augment(augment_config, mean=mean, std=std)
  n_views = augment_config.n_views

  def augment(rng: jax.Array, images: jax.Array) -> jax.Array:
    views = augment_views(*view_inputs(rng, images, n_views))
    return views.reshape((images.shape[0], n_views) + views.shape[1:])

  return augment


def from_config(config: Any, *, host_cropped: bool = False, per_view: bool = False,
                small: bool = False, **overrides: Any
                ) -> Callable[[jax.Array, jax.Array], jax.Array]:
  """`make_train_augment` of `config.augment` (`make_view_augment` if `per_view`),
  normalised with `config.data`'s statistics.

  `overrides` replace fields of `config.augment` (e.g. `n_views=1` for a single view). With
  `host_cropped` (see `data.crops_on_host`) the images arrive cropped, each view its own
  random-resized crop, and the device only flips and applies the policy: it never crops twice.
  `small` (with `per_view`): multi-crop's small views, cropped with `augment.small_crop_scale`
  to `augment.small_size` pixels (by the host where `host_cropped`), the policy otherwise the
  same.
  """
  fields = types.SimpleNamespace(**{**config.augment.to_dict(), **overrides})
  size = None
  if small:
    fields.crop_scale, size = tuple(fields.small_crop_scale), fields.small_size
  if host_cropped:
    fields.crop_scale, size = (1.0, 1.0), None
  if per_view:
    return make_view_augment(fields, mean=config.data.mean, std=config.data.std, size=size)
  return make_train_augment(fields, mean=config.data.mean, std=config.data.std)


def make_eval_transform(*, mean: Sequence[float],
                        std: Sequence[float]) -> Callable[[jax.Array], jax.Array]:
  """fn(uint8 [B, H, W, C]) -> normalised float32 [B, H, W, C]; resizing is the host's."""
  normalise = normaliser(mean, std)
  channels = len(mean)
  return lambda images: normalise(_to_unit_float(images, channels))
