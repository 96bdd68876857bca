"""JPEG compression (digital), apart from digital.py for its size: libjpeg's coder exactly
(4:2:0, integer DCT), decoded in float."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from supcon_jax.corruptions import base

# PIL's quality per severity 1..5, from make_cifar_c.py and make_imagenet_c.py (base.py
# names the commit).
TABLES: base.Tables = {
    base.CIFAR: {"jpeg_compression": (80, 65, 58, 50, 40)},
    base.IMAGENET: {"jpeg_compression": (25, 18, 15, 10, 7)},
}
_param = functools.partial(base.param, TABLES)

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


def _quant_table(table: np.ndarray, quality: int) -> np.ndarray:
  # libjpeg's jpeg_quality_scaling and jpeg_add_quant_table with force_baseline, as PIL's
  # save(quality=q) calls them.
  scale = 5000 // quality if quality < 50 else 200 - 2 * quality
  return np.clip((table * scale + 50) // 100, 1, 255).astype(np.int32)


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
                      precision=base.HIGHEST)
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
  quality = _param("jpeg_compression", severity, image.shape)
  channels = image.shape[-1]
  if channels not in (1, 3):
    raise ValueError(f"jpeg_compression needs C = 1 or 3 channels, got {image.shape}")
  h, w = image.shape[:2]
  samples = jnp.round(image * 255.0).astype(jnp.int32)
  luma_table = _quant_table(_LUMA_TABLE, quality)
  if channels == 1:
    samples = jnp.pad(samples[..., 0], ((0, -h % 8), (0, -w % 8)), mode="edge")
    return base.clip(_jpeg_plane(samples, luma_table)[:h, :w, None] / 255.0)
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
  rgb = jnp.einsum("hwk,ck->hwc", jnp.stack(planes, -1), _YCC_TO_RGB, precision=base.HIGHEST)
  return base.clip(rgb / 255.0)
