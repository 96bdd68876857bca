"""Common image corruptions (Hendrycks & Dietterich, 2019) on the device, for robustness.

"Benchmarking Neural Network Robustness to Common Corruptions and Perturbations" defines
ImageNet-C / CIFAR-10-C: fifteen corruptions at five severities. This module recreates ten
of them in JAX so that a trained classifier can be scored on corrupted copies of any
dataset (an image folder, 16x16 digits, 32x32 CIFAR-size images) without TensorFlow,
SciPy, scikit-image, OpenCV, PIL or ImageMagick: every op runs under `jax.jit` and
`jax.vmap`, on the accelerator.

The parameters are CIFAR-10-C's (make_cifar_c.py, see SEVERITY_PARAMS), chosen for small
images. Each op takes one float32 image [H, W, C] in [0, 1] (C = 1 or 3), a key and a
static severity 1..5, and returns the same shape in [0, 1]; `corrupt` maps a uint8 batch.

Ops and how each departs from the reference (details in each docstring):
gaussian_noise, impulse_noise: exact but for the random number generator;
shot_noise: NumPy's Poisson samplers, with a fixed number of rounds (so per image);
defocus_blur: exact (the same aliased, blurred disk kernel and reflect-101 border);
motion_blur: ImageMagick's one-sided Gaussian line kernel, in float, without its PNG trip;
fog: the same diamond-square plasma, sized to the next power of two >= the image;
brightness, contrast: exact;
pixelate: PIL's BOX down- and up-scaling as matrices, without PIL's 8-bit rounding;
jpeg_compression: libjpeg's coder exactly (4:2:0, integer DCT), decoded in float.
The reference stores outputs with np.uint8 (truncation); `corrupt` rounds to nearest.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from supcon_jax.checks import one_of

SEVERITIES = (1, 2, 3, 4, 5)

# One parameter per severity 1..5, transcribed from CIFAR-10-C's generator:
# github.com/hendrycks/robustness, ImageNet-C/create_c/make_cifar_c.py (read at commit
# 8190fe329f5f072a06e3a2aea02bb5dda69aed9f; the file dates from ca36008, January 2019).
SEVERITY_PARAMS: dict[str, tuple] = {
    "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),  # noise std
    "shot_noise": (500, 250, 100, 75, 50),  # Poisson events per unit intensity
    "impulse_noise": (0.01, 0.02, 0.03, 0.05, 0.07),  # fraction of values set to 0 or 1
    # disk radius, sigma of the Gaussian that anti-aliases the disk
    "defocus_blur": ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)),
    "motion_blur": ((6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)),  # radius, sigma
    "fog": ((0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)),  # strength, wibble decay
    "brightness": (0.05, 0.1, 0.15, 0.2, 0.3),  # added to HSV value
    "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),  # factor about each channel's mean
    "pixelate": (0.95, 0.9, 0.85, 0.75, 0.65),  # downscale factor
    "jpeg_compression": (80, 65, 58, 50, 40),  # quality
}

# Full float32 for the ops' matrix products: on recent GPUs the default may be TF32, whose
# ~1e-3 relative error is a quarter of a level.
_HIGHEST = jax.lax.Precision.HIGHEST


def _param(name: str, severity: int):
  # Severity picks a Python constant, so it must be static: a traced value cannot.
  if (isinstance(severity, bool) or not isinstance(severity, (int, np.integer))
      or severity not in SEVERITIES):
    raise ValueError(f"severity={severity!r} is not one of {', '.join(map(str, SEVERITIES))} "
                     "(a static Python int)")
  return SEVERITY_PARAMS[name][severity - 1]


def _clip(img: jax.Array) -> jax.Array:
  return jnp.clip(img, 0.0, 1.0)


# ----------------------------------------------------------------------------- noise


def gaussian_noise(key: jax.Array, image: jax.Array, severity: int) -> jax.Array:
  """clip(x + c * n), n = jax.random.normal(key, x.shape): the reference's formula."""
  c = _param("gaussian_noise", severity)
  return _clip(image + c * jax.random.normal(key, image.shape, image.dtype))


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
  c = _param("shot_noise", severity)
  return _clip(_poisson(key, image * c) / c)


def impulse_noise(key: jax.Array, image: jax.Array, severity: int) -> jax.Array:
  """Salt and pepper as skimage's random_noise(mode='s&p', amount=c).

  Each value (each channel separately) is hit with probability c, then set to 1 or 0 with
  equal odds; `hit, salt = jax.random.uniform(key, (2,) + x.shape)`.
  """
  c = _param("impulse_noise", severity)
  hit, salt = jax.random.uniform(key, (2,) + image.shape, image.dtype)
  return jnp.where(hit < c, jnp.where(salt < 0.5, 1.0, 0.0), image)


# ------------------------------------------------------------------------------ blur


def _disk_kernel(radius: float, alias_blur: float) -> np.ndarray:
  # make_cifar_c's disk(): the pixels within `radius` of the centre, normalised, smoothed by
  # cv2.GaussianBlur with a 3x3 kernel (its branch for radius <= 8, as every severity is).
  # Built on the kernel's support only (radius + 1 each side); the reference's 17x17 grid
  # is zero beyond it.
  r = int(radius) + 1
  grid = np.arange(-r, r + 1)
  disk = (grid[:, None]**2 + grid[None, :]**2 <= radius**2).astype(np.float64)
  disk /= disk.sum()
  taps = np.exp(-np.arange(-1, 2)**2 / (2.0 * alias_blur**2))
  taps /= taps.sum()
  padded = np.pad(disk, 1)
  size = 2 * r + 1
  return sum(taps[i] * taps[j] * padded[i:i + size, j:j + size]
             for i in range(3) for j in range(3))


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
  by the same 3x3 Gaussian, applied per channel with the same reflect-101 border.
  """
  del key
  radius, alias_blur = _param("defocus_blur", severity)
  return _clip(_correlate(image, _disk_kernel(radius, alias_blur)))


def motion_blur(key: jax.Array, image: jax.Array, severity: int) -> jax.Array:
  """ImageMagick's MotionBlurImage(radius, sigma, angle ~ U(-45, 45) degrees) in JAX.

  As ImageMagick (and not a centred line kernel): the blur is one-sided, taps k = 0 ..
  2 * radius with weights exp(-k^2 / (2 sigma^2)), normalised; tap k reads the pixel
  round(k cos a) columns right and round(k sin a) rows down (rounding halves down, as its
  ceil(v - 0.5)); pixels beyond the border repeat the edge (its default virtual pixels).
  It differs from the reference's ImageMagick call only in arithmetic: float32 in [0, 1]
  instead of ImageMagick's quantum depth after a PNG round trip, and the angle comes from
  `jax.random.uniform(key, (), minval=-45, maxval=45)`.
  """
  radius, sigma = _param("motion_blur", severity)
  width = 2 * radius + 1  # ImageMagick's GetOptimalKernelWidth1D for radius > 0
  taps = np.exp(-np.arange(width)**2 / (2.0 * sigma**2))
  taps /= taps.sum()
  angle = jnp.deg2rad(jax.random.uniform(key, (), minval=-45.0, maxval=45.0))
  steps = jnp.arange(width, dtype=jnp.float32)
  dx = jnp.ceil(steps * jnp.cos(angle) - 0.5).astype(jnp.int32)
  dy = jnp.ceil(steps * jnp.sin(angle) - 0.5).astype(jnp.int32)
  h, w = image.shape[:2]
  rows = jnp.clip(jnp.arange(h)[None, :] + dy[:, None], 0, h - 1)  # [width, H]
  cols = jnp.clip(jnp.arange(w)[None, :] + dx[:, None], 0, w - 1)  # [width, W]
  shifted = image[rows[:, :, None], cols[:, None, :]]  # [width, H, W, C]
  return _clip(jnp.einsum("k,khwc->hwc", taps.astype(np.float32), shifted,
                          precision=_HIGHEST))


# ------------------------------------------------------------------------------- fog


def _plasma_fractal(key: jax.Array, mapsize: int, wibble_decay: float) -> jax.Array:
  """make_cifar_c's diamond-square heightmap [mapsize, mapsize], scaled to [0, 1].

  Every filled point is the mean of its four neighbours (wrapping around) plus
  wibble * U(-wibble, wibble), as the reference (the wibble enters squared); wibble starts
  at 100 and is divided by `wibble_decay` per level. The mapsize^2 - 1 uniforms come from
  one `jax.random.uniform(key, (mapsize**2 - 1,))` (one draw compiles far faster than one
  per fill), used in the reference's order: per level, squares, then the two diamond sets.
  """
  uniforms = jax.random.uniform(key, (mapsize * mapsize - 1,))
  used = 0
  grid = jnp.zeros((mapsize, mapsize), jnp.float32)
  step, wibble = mapsize, 100.0
  while step >= 2:
    half = step // 2

    def wibbled_mean(total):
      nonlocal used
      u = uniforms[used:used + total.size].reshape(total.shape)
      used += total.size
      return total / 4.0 + wibble * wibble * (2.0 * u - 1.0)  # noqa: B023  called at once

    corners = grid[::step, ::step]
    squares = corners + jnp.roll(corners, -1, axis=0)
    squares = squares + jnp.roll(squares, -1, axis=1)
    grid = grid.at[half::step, half::step].set(wibbled_mean(squares))
    centres = grid[half::step, half::step]
    left = centres + jnp.roll(centres, 1, axis=0) + corners + jnp.roll(corners, -1, axis=1)
    grid = grid.at[::step, half::step].set(wibbled_mean(left))
    top = centres + jnp.roll(centres, 1, axis=1) + corners + jnp.roll(corners, -1, axis=0)
    grid = grid.at[half::step, ::step].set(wibbled_mean(top))
    step, wibble = half, wibble / wibble_decay
  grid = grid - grid.min()
  return grid / grid.max()


def fog(key: jax.Array, image: jax.Array, severity: int) -> jax.Array:
  """(x + s * plasma) * max(x) / (max(x) + s) with the reference's diamond-square plasma.

  The reference draws a 32x32 map for CIFAR (256 for ImageNet's 224); here the map's side
  is the next power of two >= max(H, W), cropped to [H, W] after scaling to [0, 1] as the
  reference does, and its noise comes from `key` (see _plasma_fractal).
  """
  strength, decay = _param("fog", severity)
  h, w = image.shape[:2]
  mapsize = 1 << (max(h, w) - 1).bit_length()
  peak = image.max()
  fogged = image + strength * _plasma_fractal(key, mapsize, decay)[:h, :w, None]
  return _clip(fogged * peak / (peak + strength))


# ---------------------------------------------------------------------------- colour


def brightness(key: jax.Array, image: jax.Array, severity: int) -> jax.Array:
  """HSV value + c (clipped), hue and saturation kept, as the reference; no key.

  With hue and saturation fixed, HSV -> RGB is linear in the value, so raising the value
  from v to v' scales every channel by v' / v: skimage's round trip without its hue
  arithmetic. Black (v = 0, saturation 0 by skimage's convention) becomes grey v'. One
  channel is its own value: min(x + c, 1).
  """
  del key
  c = _param("brightness", severity)
  value = image.max(axis=-1, keepdims=True)
  brighter = jnp.minimum(value + c, 1.0)
  lit = value > 0
  return _clip(jnp.where(lit, image * (brighter / jnp.where(lit, value, 1.0)), brighter))


def contrast(key: jax.Array, image: jax.Array, severity: int) -> jax.Array:
  """(x - m) * c + m with m each channel's mean, as the reference; no key."""
  del key
  c = _param("contrast", severity)
  mean = image.mean(axis=(0, 1), keepdims=True)
  return _clip((image - mean) * c + mean)


# ------------------------------------------------------------------------- pixelate


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
  c = _param("pixelate", severity)
  h, w = image.shape[:2]
  small_h, small_w = int(h * c), int(w * c)
  rows = _box_resize_matrix(small_h, h) @ _box_resize_matrix(h, small_h)
  cols = _box_resize_matrix(small_w, w) @ _box_resize_matrix(w, small_w)
  return _clip(jnp.einsum("ij,jkc,lk->ilc", rows.astype(np.float32), image,
                          cols.astype(np.float32), precision=_HIGHEST))


# ----------------------------------------------------------------------------- JPEG

# The example tables of the JPEG standard (Annex K), natural order, as libjpeg's jcparam.c.
_LUMA_TABLE = np.array([
    [16, 11, 10, 16, 24, 40, 51, 61],
    [12, 12, 14, 19, 26, 58, 60, 55],
    [14, 13, 16, 24, 40, 57, 69, 56],
    [14, 17, 22, 29, 51, 87, 80, 62],
    [18, 22, 37, 56, 68, 109, 103, 77],
    [24, 35, 55, 64, 81, 104, 113, 92],
    [49, 64, 78, 87, 103, 121, 120, 101],
    [72, 92, 95, 98, 112, 100, 103, 99],
])
_CHROMA_TABLE = np.full((8, 8), 99)
_CHROMA_TABLE[:4, :4] = [[17, 18, 24, 47], [18, 21, 26, 66], [24, 26, 56, 99], [47, 66, 99, 99]]


def _fix(x: float, bits: int = 16) -> int:
  # libjpeg's FIX(): x in fixed point with `bits` fraction bits.
  return int(x * (1 << bits) + 0.5)


# libjpeg's encoder colour conversion (jccolor.c) in its 16-bit fixed point, so that
# Y, Cb, Cr are the same integers as libjpeg's; Cb and Cr round with half - 1.
_RGB_TO_YCC_FIXED = np.array([[_fix(0.299), _fix(0.587), _fix(0.114)],
                              [-_fix(0.16874), -_fix(0.33126), _fix(0.5)],
                              [_fix(0.5), -_fix(0.41869), -_fix(0.08131)]], np.int32)
_RGB_TO_YCC_OFFSET = np.array([1 << 15, (128 << 16) + (1 << 15) - 1,
                               (128 << 16) + (1 << 15) - 1], np.int32)
# The decoder's (jdcolor.c), in floating point.
_YCC_TO_RGB = np.array([[1.0, 0.0, 1.402],
                        [1.0, -0.34414, -0.71414],
                        [1.0, 1.772, 0.0]], np.float32)


def _quant_table(base: np.ndarray, quality: int) -> np.ndarray:
  # libjpeg's jpeg_quality_scaling and jpeg_add_quant_table with force_baseline, as PIL's
  # save(quality=q) calls them.
  scale = 5000 // quality if quality < 50 else 200 - 2 * quality
  return np.clip((base * scale + 50) // 100, 1, 255).astype(np.int32)


# jfdctint.c's constants: FIX(x) with 13 fraction bits.
_FDCT = {name: _fix(value, 13) for name, value in dict(
    c0_298=0.298631336, c0_390=0.390180644, c0_541=0.541196100, c0_765=0.765366865,
    c0_899=0.899976223, c1_175=1.175875602, c1_501=1.501321110, c1_847=1.847759065,
    c1_961=1.961570560, c2_053=2.053119869, c2_562=2.562915447, c3_072=3.072711026).items()}


def _fdct_pass(d: jax.Array, first: bool) -> jax.Array:
  # One 1-D pass of libjpeg's jpeg_fdct_islow (jfdctint.c, LL&M) along the last axis, in
  # its integer arithmetic: the first pass (rows) keeps 2 extra bits, the second removes
  # them, leaving the coefficients scaled by 8.
  c = _FDCT
  descale = lambda x, n: (x + (1 << (n - 1))) >> n
  x = [d[..., i] for i in range(8)]
  tmp0, tmp7 = x[0] + x[7], x[0] - x[7]
  tmp1, tmp6 = x[1] + x[6], x[1] - x[6]
  tmp2, tmp5 = x[2] + x[5], x[2] - x[5]
  tmp3, tmp4 = x[3] + x[4], x[3] - x[4]
  tmp10, tmp13, tmp11, tmp12 = tmp0 + tmp3, tmp0 - tmp3, tmp1 + tmp2, tmp1 - tmp2
  out = [None] * 8
  if first:
    out[0], out[4] = (tmp10 + tmp11) << 2, (tmp10 - tmp11) << 2
  else:
    out[0], out[4] = descale(tmp10 + tmp11, 2), descale(tmp10 - tmp11, 2)
  bits = 13 - 2 if first else 13 + 2
  z1 = (tmp12 + tmp13) * c["c0_541"]
  out[2] = descale(z1 + tmp13 * c["c0_765"], bits)
  out[6] = descale(z1 - tmp12 * c["c1_847"], bits)
  z1, z2, z3, z4 = tmp4 + tmp7, tmp5 + tmp6, tmp4 + tmp6, tmp5 + tmp7
  z5 = (z3 + z4) * c["c1_175"]
  tmp4, tmp5 = tmp4 * c["c0_298"], tmp5 * c["c2_053"]
  tmp6, tmp7 = tmp6 * c["c3_072"], tmp7 * c["c1_501"]
  z1, z2 = z1 * -c["c0_899"], z2 * -c["c2_562"]
  z3, z4 = z3 * -c["c1_961"] + z5, z4 * -c["c0_390"] + z5
  out[7] = descale(tmp4 + z1 + z3, bits)
  out[5] = descale(tmp5 + z2 + z4, bits)
  out[3] = descale(tmp6 + z2 + z3, bits)
  out[1] = descale(tmp7 + z1 + z4, bits)
  return jnp.stack(out, axis=-1)


def _dct_matrix() -> np.ndarray:
  # Orthonormal 8-point DCT-II, rows = frequencies: JPEG's transform.
  n = np.arange(8)
  d = np.sqrt(2.0 / 8.0) * np.cos((2 * n[None, :] + 1) * n[:, None] * np.pi / 16.0)
  d[0] /= np.sqrt(2.0)
  return d.astype(np.float32)


def _jpeg_plane(samples: jax.Array, table: np.ndarray) -> jax.Array:
  """Code and decode int32 samples [H, W] (multiples of 8) with quantisation `table`.

  Coding is libjpeg's, bit for bit: level shift, integer DCT (jfdctint.c), quantisation
  rounding halves away from zero (jcdctmgr.c), so the quantised coefficients are the
  file's. Decoding is a float inverse DCT, clamped to 0..255 but not rounded.
  """
  h, w = samples.shape
  blocks = (samples - 128).reshape(h // 8, 8, w // 8, 8)  # [block row, y, block col, x]
  coef = _fdct_pass(blocks, first=True)  # along x
  coef = jnp.moveaxis(_fdct_pass(jnp.moveaxis(coef, 1, -1), first=False), -1, 1)  # along y
  q = table[None, :, None, :]
  levels = jnp.sign(coef) * ((jnp.abs(coef) + 4 * q) // (8 * q))  # scaled by 8: 8q
  d = _dct_matrix()
  pixels = jnp.einsum("ux,iujv,vy->ixjy", d, (levels * q).astype(jnp.float32), d,
                      precision=_HIGHEST)
  return jnp.clip(pixels.reshape(h, w) + 128.0, 0.0, 255.0)


def _downsample(plane: jax.Array) -> jax.Array:
  # libjpeg's h2v2_downsample: the 2x2 sum plus a bias alternating 1, 2 along each row,
  # divided by 4 with truncation.
  h, w = plane.shape
  sums = plane.reshape(h // 2, 2, w // 2, 2).sum(axis=(1, 3))
  return (sums + 1 + jnp.arange(w // 2) % 2) >> 2


def _fancy_upsample(plane: jax.Array, axis: int) -> jax.Array:
  # libjpeg's "fancy" (triangle) upsampling by 2 along `axis`: each output sample is 3/4 of
  # the nearer input and 1/4 of the next nearest, the edge samples repeated.
  n = plane.shape[axis]
  take = lambda lo, hi: jax.lax.slice_in_dim(plane, lo, hi, axis=axis)
  before = jnp.concatenate([take(0, 1), take(0, n - 1)], axis=axis)
  after = jnp.concatenate([take(1, n), take(n - 1, n)], axis=axis)
  pairs = jnp.stack([0.75 * plane + 0.25 * before, 0.75 * plane + 0.25 * after], axis + 1)
  return pairs.reshape(plane.shape[:axis] + (2 * n,) + plane.shape[axis + 1:])


def jpeg_compression(key: jax.Array, image: jax.Array, severity: int) -> jax.Array:
  """JPEG at the reference's PIL quality: libjpeg's coder in JAX, a float decoder; no key.

  As PIL's save(quality=q) with libjpeg's defaults, the coding bit for bit: 8-bit samples
  (the image rounded to the 256 levels), fixed-point RGB -> YCbCr, chroma subsampled 2x2
  (4:2:0, PIL's default) by libjpeg's biased integer mean, edges repeated to whole
  blocks, integer 8x8 DCT, quantisation by the standard tables scaled for q; so the
  quantised coefficients are those of PIL's file. One channel is coded as a greyscale
  JPEG (luma only). The decoding differs from libjpeg's in arithmetic only: a float
  inverse DCT, fancy (triangle) chroma upsampling and YCbCr -> RGB without libjpeg's
  rounding to 8 bits after each (~0.3/255 mean difference from PIL's output).
  """
  del key
  quality = _param("jpeg_compression", severity)
  channels = image.shape[-1]
  if channels not in (1, 3):
    raise ValueError(f"jpeg_compression needs C = 1 or 3 channels, got {image.shape}")
  h, w = image.shape[:2]
  samples = jnp.round(image * 255.0).astype(jnp.int32)
  luma_table = _quant_table(_LUMA_TABLE, quality)
  if channels == 1:
    samples = jnp.pad(samples[..., 0], ((0, -h % 8), (0, -w % 8)), mode="edge")
    return _clip(_jpeg_plane(samples, luma_table)[:h, :w, None] / 255.0)
  # libjpeg's edge padding: columns to whole 16-wide MCUs and rows to pairs before
  # downsampling, then each component's rows to whole blocks.
  samples = jnp.pad(samples, ((0, h % 2), (0, -w % 16), (0, 0)), mode="edge")
  ycc = (sum(samples[..., i, None] * _RGB_TO_YCC_FIXED[:, i] for i in range(3))
         + _RGB_TO_YCC_OFFSET) >> 16
  to_blocks = lambda plane: jnp.pad(plane, ((0, -plane.shape[0] % 8), (0, 0)), mode="edge")
  planes = [_jpeg_plane(to_blocks(ycc[..., 0]), luma_table)[:h, :w]]
  chroma_table = _quant_table(_CHROMA_TABLE, quality)
  for i in (1, 2):
    small = _jpeg_plane(to_blocks(_downsample(ycc[..., i])), chroma_table)
    # The decoder upsamples only the chroma samples covering the image, edges repeated.
    small = small[:(h + 1) // 2, :(w + 1) // 2] - 128.0
    planes.append(_fancy_upsample(_fancy_upsample(small, 0), 1)[:h, :w])
  rgb = jnp.einsum("hwk,ck->hwc", jnp.stack(planes, -1), _YCC_TO_RGB, precision=_HIGHEST)
  return _clip(rgb / 255.0)


# ------------------------------------------------------------------------ public API

_OPS: dict[str, Callable[[jax.Array, jax.Array, int], jax.Array]] = {
    "gaussian_noise": gaussian_noise,
    "shot_noise": shot_noise,
    "impulse_noise": impulse_noise,
    "defocus_blur": defocus_blur,
    "motion_blur": motion_blur,
    "fog": fog,
    "brightness": brightness,
    "contrast": contrast,
    "pixelate": pixelate,
    "jpeg_compression": jpeg_compression,
}
CORRUPTIONS: tuple[str, ...] = tuple(_OPS)  # the reference's order


def corrupt(name: str, severity: int, key: jax.Array, images: jax.Array) -> jax.Array:
  """uint8 [N, H, W, C] -> corrupted uint8 (rounded); image i uses split(key, N)[i]."""
  one_of("corruption", name, CORRUPTIONS)
  _param(name, severity)
  if images.ndim != 4 or images.dtype != jnp.uint8:
    raise ValueError(f"images must be uint8 [N, H, W, C], got {images.dtype} {images.shape}")
  op = _OPS[name]
  keys = jax.random.split(key, images.shape[0])
  x = images.astype(jnp.float32) / 255.0
  out = jax.vmap(lambda k, img: op(k, img, severity))(keys, x)
  return jnp.round(out * 255.0).astype(jnp.uint8)
