"""Tests of supcon_jax.augment: each op against NumPy references or exact properties.

The policy magnitudes are checked against TensorFlow's reference, transcribed here rather
than read from the code under test: tensorflow/tpu models/official/efficientnet/
autoaugment.py (commit 7dc921f846c9e4071f3884b768a7ddf521272a49); its AutoAugment table,
policy_v0, is embedded as that file's source text and parsed.
"""

from __future__ import annotations

import ast
import colorsys
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image, ImageEnhance

from supcon_jax import augment as A
from supcon_jax import augment_policies as P
from supcon_jax.config import base_config

GREY = 128 / 255
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)


def _image(seed=0, size=16, channels=3):
  """A float32 image on the 256 uint8 levels, like the pipeline's input."""
  levels = np.random.RandomState(seed).randint(0, 256, (size, size, channels))
  return (levels / 255.0).astype(np.float32)


def _key(i=0):
  return jax.random.key(i)


# ------------------------------------------------------ every op: shape, dtype, range

OPS = {
    "flip": A.flip,
    "adjust_hue": lambda x: A.adjust_hue(x, 0.3),
    "grayscale": A.grayscale,
    "gaussian_blur": lambda x: A.gaussian_blur(x, 1.5, kernel_size=5),
    "rotate": lambda x: A.rotate(x, 33.0),
    "shear_x": lambda x: A.shear_x(x, 0.3),
    "shear_y": lambda x: A.shear_y(x, -0.3),
    "translate_x": lambda x: A.translate_x(x, 3.5),
    "translate_y": lambda x: A.translate_y(x, -2.0),
    "autocontrast": A.autocontrast,
    "equalize": A.equalize,
    "invert": A.invert,
    "posterize": lambda x: A.posterize(x, 3),
    "solarize": lambda x: A.solarize(x, 0.4),
    "solarize_add": lambda x: A.solarize_add(x, 0.3),
    "color": lambda x: A.color(x, 1.9),
    "contrast": lambda x: A.contrast(x, 1.9),
    "brightness": lambda x: A.brightness(x, 1.9),
    "sharpness": lambda x: A.sharpness(x, 1.9),
    "identity": A.identity,
}  # random ops: test_same_key_same_output_different_key_differs; policies: the pipeline


@pytest.mark.parametrize("name", sorted(OPS))
def test_op_keeps_shape_dtype_range(name):
  x = _image()
  y = jax.jit(OPS[name])(x)
  assert y.shape == x.shape and y.dtype == jnp.float32
  assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0


# ------------------------------------------------------------- identity magnitudes

IDENTITIES = {
    "rotate 0": lambda x: A.rotate(x, 0.0),
    "rotate 360": lambda x: A.rotate(x, 360.0),
    "shear_x 0": lambda x: A.shear_x(x, 0.0),
    "shear_y 0": lambda x: A.shear_y(x, 0.0),
    "translate_x 0": lambda x: A.translate_x(x, 0.0),
    "translate_y 0": lambda x: A.translate_y(x, 0.0),
    "brightness 1": lambda x: A.brightness(x, 1.0),
    "contrast 1": lambda x: A.contrast(x, 1.0),
    "color 1": lambda x: A.color(x, 1.0),
    "sharpness 1": lambda x: A.sharpness(x, 1.0),
    "solarize 256/255": lambda x: A.solarize(x, 256 / 255),  # TF's threshold at M=10
    "solarize_add 0": lambda x: A.solarize_add(x, 0.0),
    "posterize 8": lambda x: A.posterize(x, 8),
    "hue 0": lambda x: A.adjust_hue(x, 0.0),
    "jitter 0": lambda x: A.color_jitter(_key(), x, 0.0, 0.0, 0.0, 0.0),
    "crop scale 1 ratio 1": lambda x: A.random_resized_crop(_key(), x, (1.0, 1.0), (1.0, 1.0)),
    "blur 1 tap": lambda x: A.gaussian_blur(x, 1.0, kernel_size=1),
    "randaugment 0 ops": lambda x: A.randaugment(_key(), x, 0, 9),
}


@pytest.mark.parametrize("name", sorted(IDENTITIES))
def test_zero_magnitude_is_identity(name):
  x = _image(1)
  np.testing.assert_allclose(jax.jit(IDENTITIES[name])(x), x, atol=2e-5)


# ------------------------------------------------------------------ geometric ops


def test_flip_matches_numpy_and_is_an_involution():
  x = _image(3)
  np.testing.assert_array_equal(A.flip(x), x[:, ::-1])
  np.testing.assert_array_equal(A.flip(A.flip(x)), x)


@pytest.mark.parametrize("degrees,k", [(90.0, 1), (-90.0, -1), (180.0, 2)])
def test_rotate_multiple_of_90_matches_rot90(degrees, k):
  x = _image(4, size=9)
  np.testing.assert_allclose(jax.jit(A.rotate)(x, degrees), np.rot90(x, k, axes=(0, 1)), atol=1e-5)


def test_rotate_fills_corners_with_grey():
  x = np.ones((16, 16, 3), np.float32)
  y = np.asarray(A.rotate(x, 45.0))
  np.testing.assert_allclose(y[0, 0], GREY, atol=1e-6)  # corner came from outside
  np.testing.assert_allclose(y[8, 8], 1.0, atol=1e-6)


def test_translate_x_shifts_right_and_fills():
  x = _image(5)
  y = np.asarray(A.translate_x(x, 2.0))
  np.testing.assert_allclose(y[:, 2:], x[:, :-2], atol=1e-6)
  np.testing.assert_allclose(y[:, :2], GREY, atol=1e-6)
  y = np.asarray(A.translate_y(x, -3.0))
  np.testing.assert_allclose(y[:-3], x[3:], atol=1e-6)
  np.testing.assert_allclose(y[-3:], GREY, atol=1e-6)


def test_shear_matches_row_and_column_shifts():
  # TF / PIL ShearX(1): output (row y, col c) reads input (y, c + y); ShearY: (y + c, c).
  x = _image(6, size=8)
  ref_x = np.full_like(x, GREY)
  ref_y = np.full_like(x, GREY)
  for i in range(8):
    ref_x[i, :8 - i] = x[i, i:]
    ref_y[:8 - i, i] = x[i:, i]
  np.testing.assert_allclose(A.shear_x(x, 1.0), ref_x, atol=1e-6)
  np.testing.assert_allclose(A.shear_y(x, 1.0), ref_y, atol=1e-6)


def test_warp_is_vmappable_with_traced_angles():
  xs = np.stack([_image(i, size=8) for i in range(3)])
  angles = jnp.array([90.0, 180.0, -90.0])
  ys = jax.jit(jax.vmap(A.rotate))(xs, angles)
  for x, y, k in zip(xs, np.asarray(ys), (1, 2, -1)):
    np.testing.assert_allclose(y, np.rot90(x, k, axes=(0, 1)), atol=1e-5)


# ------------------------------------------------------------------ random resized crop


def _np_resized_crop(x, top, left, h, w, size=None):
  """Independent float64 reference: crop, then bilinear resize (to size x size, default the
  image's size), align_corners=False."""
  crop = x[top:top + h, left:left + w].astype(np.float64)

  def axis_weights(n_in, n_out):
    src = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
    m = np.zeros((n_out, n_in))
    lo = np.floor(src).astype(int)
    hi = np.minimum(lo + 1, n_in - 1)
    m[np.arange(n_out), lo] += 1 - (src - lo)
    m[np.arange(n_out), hi] += src - lo
    return m

  out_h, out_w = (size, size) if size else x.shape[:2]
  return np.einsum("ij,jkc,lk->ilc", axis_weights(h, out_h), crop, axis_weights(w, out_w))


def test_resized_crop_matches_numpy_bilinear():
  x = _image(7)
  for box in [(0, 0, 8, 8), (3, 5, 10, 7), (0, 1, 16, 5)]:
    np.testing.assert_allclose(A.resized_crop(x, *box), _np_resized_crop(x, *box), atol=1e-5)


def test_resized_crop_to_another_size_matches_numpy_bilinear():
  # Multi-crop's small views: a box resized to its own side, enlarged or reduced.
  x = _image(7)
  for box, size in [((3, 5, 10, 7), 6), ((0, 1, 16, 5), 12), ((2, 2, 4, 4), 9)]:
    got = A.resized_crop(x, *box, size=size)
    assert got.shape == (size, size, x.shape[-1])
    # Pixels in [0, 1], two float32 interpolations against float64: errors ~1e-7.
    np.testing.assert_allclose(got, _np_resized_crop(x, *box, size=size), atol=1e-5)


def test_random_resized_crop_to_a_small_size_reads_a_box_of_its_scale():
  n = 16
  ramp = np.tile(np.arange(n, dtype=np.float32)[:, None, None] / (n - 1), (1, n, 1))
  crop = jax.jit(lambda k: A.random_resized_crop(k, ramp, (0.0625, 0.0625), (1.0, 1.0), size=6))
  for i in range(5):
    y = np.asarray(crop(_key(i)))
    assert y.shape == (6, 6, 1)
    # A 4-row box (1/16 of the area) read at 6 rows: source rows top + (j + 0.5) 4/6 - 0.5
    # clamped to [top, top + 3], so rows top .. top + 3 exactly (at the image's size, 16
    # rows, the same box also spans 3).
    # float32 ramp values i / 15 and their interpolation: errors ~1e-7, times 15 rows.
    np.testing.assert_allclose((y.max() - y.min()) * (n - 1), 3.0, atol=1e-4)
    np.testing.assert_allclose(y[1, 0, 0] - y[0, 0, 0], (1.5 * 4 / 6 - 0.5) / (n - 1),
                               atol=1e-6)  # row 1 reads 0.5 rows below row 0 (top, clamped)


def test_random_resized_crop_stays_inside_a_box_of_the_right_area():
  # A ramp image tells which source rows / columns the crop read.
  n = 16
  ramp = np.tile(np.arange(n, dtype=np.float32)[:, None, None] / (n - 1), (1, n, 1))
  crop = jax.jit(lambda k: A.random_resized_crop(k, ramp, (0.25, 0.25), (1.0, 1.0)))
  for i in range(5):
    y = np.asarray(crop(_key(i)))
    span = (y.max() - y.min()) * (n - 1)
    np.testing.assert_allclose(span, 7.0, atol=1e-4)  # an 8-row box: rows top..top+7


def test_random_resized_crop_falls_back_to_centre_box():
  # No 16x16-area box with aspect 2 fits in a 16x16 image: torchvision's fallback is the
  # full width and height round(16 / 2) = 8, centred.
  x = _image(8)
  y = A.random_resized_crop(_key(), x, (1.0, 1.0), (2.0, 2.0))
  np.testing.assert_allclose(y, _np_resized_crop(x, 4, 0, 8, 16), atol=1e-5)
  y = A.random_resized_crop(_key(), x, (1.0, 1.0), (0.5, 0.5))  # too tall: full height
  np.testing.assert_allclose(y, _np_resized_crop(x, 0, 4, 16, 8), atol=1e-5)


# ------------------------------------------------------------------------ colour ops


def test_grayscale_weights_and_equal_channels():
  x = np.zeros((2, 2, 3), np.float32)
  x[0, 0] = (1, 0, 0)
  x[0, 1] = (0, 1, 0)
  x[1, 0] = (0, 0, 1)
  x[1, 1] = (0.2, 0.4, 0.6)
  y = np.asarray(A.grayscale(x))
  mixed = 0.299 * 0.2 + 0.587 * 0.4 + 0.114 * 0.6
  np.testing.assert_allclose(y[..., 0], [[0.299, 0.587], [0.114, mixed]], atol=1e-6)
  assert np.all(y[..., 0] == y[..., 1]) and np.all(y[..., 1] == y[..., 2])


def test_single_channel_colour_ops_degrade_to_identity():
  x = _image(9, channels=1)
  np.testing.assert_array_equal(A.grayscale(x), x)
  np.testing.assert_array_equal(A.adjust_hue(x, 0.3), x)
  np.testing.assert_allclose(A.color(x, 0.0), x, atol=1e-6)
  y = A.color_jitter(_key(), x)
  assert y.shape == x.shape


def test_adjust_hue_matches_colorsys():
  x = _image(10, size=6)
  shift = 0.23
  ref = np.array([[colorsys.hsv_to_rgb((h + shift) % 1.0, s, v)
                   for h, s, v in (colorsys.rgb_to_hsv(*p) for p in row)] for row in x])
  np.testing.assert_allclose(A.adjust_hue(x, shift), ref, atol=1e-5)


def test_enhance_ops_at_factor_zero():
  x = _image(11)
  luma = x @ np.array([0.299, 0.587, 0.114])
  np.testing.assert_allclose(A.brightness(x, 0.5), x * 0.5, atol=1e-6)
  np.testing.assert_allclose(A.color(x, 0.0), np.repeat(luma[..., None], 3, -1), atol=1e-6)
  np.testing.assert_allclose(A.contrast(x, 0.0), np.full_like(x, luma.mean()), atol=1e-6)


def test_sharpness_zero_is_pil_smooth_inside_and_keeps_border():
  x = _image(12, size=8).astype(np.float64)
  kernel = np.array([[1, 1, 1], [1, 5, 1], [1, 1, 1]]) / 13.0
  ref = x.copy()
  for r in range(1, 7):
    for c in range(1, 7):
      ref[r, c] = np.einsum("ij,ijk->k", kernel, x[r - 1:r + 2, c - 1:c + 2])
  np.testing.assert_allclose(A.sharpness(x.astype(np.float32), 0.0), ref, atol=1e-6)


def test_pixel_level_ops_on_known_values():
  x = np.array([[[200 / 255, 0.3, 0.8], [0.0, 1.0, 0.6]]], np.float32)
  np.testing.assert_allclose(A.posterize(x, 4)[0, 0, 0], 192 / 255, atol=1e-6)
  # bits = bits kept (TF and PIL): 182 = 0b10110110 keeps 0b101 with 3, 0b1011 with 4.
  np.testing.assert_allclose(A.posterize(np.float32([182 / 255]), 3), [160 / 255], atol=1e-6)
  np.testing.assert_allclose(A.posterize(np.float32([182 / 255]), 4), [176 / 255], atol=1e-6)
  # Threshold T / 255 inverts levels >= T, as TF's uint8 `image < T` keeps the rest; level
  # 230 both as k / 255 and as the pipeline makes it (times float32 1/255, an ulp off).
  boundary = np.float32([229 / 255, 230 / 255, np.float32(230) * np.float32(1 / 255), 231 / 255])
  np.testing.assert_allclose(A.solarize(boundary, 230 / 255),
                             [229 / 255, 25 / 255, 25 / 255, 24 / 255], atol=1e-6)
  np.testing.assert_allclose(A.solarize_add(np.float32([127, 128]) * np.float32(1 / 255), 99 / 255),
                             [226 / 255, 128 / 255], atol=1e-6)
  np.testing.assert_allclose(A.solarize(x, 0.5), [[[55 / 255, 0.3, 0.2], [0.0, 0.0, 0.4]]],
                             atol=1e-6)
  np.testing.assert_allclose(A.solarize_add(x, 0.1), [[[200 / 255, 0.4, 0.8], [0.1, 1.0, 0.6]]],
                             atol=1e-6)
  np.testing.assert_allclose(A.invert(x), 1 - x, atol=1e-7)


def test_autocontrast_stretches_each_channel():
  x = np.zeros((2, 2, 3), np.float32)
  x[..., 0] = [[0.2, 0.4], [0.6, 0.3]]
  x[..., 1] = 0.5  # flat: unchanged
  x[..., 2] = [[0.0, 1.0], [0.5, 0.5]]
  y = np.asarray(A.autocontrast(x))
  np.testing.assert_allclose(y[..., 0], [[0.0, 0.5], [1.0, 0.25]], atol=1e-6)
  np.testing.assert_allclose(y[..., 1:], x[..., 1:], atol=1e-6)


def _np_equalize(levels):
  """PIL ImageOps.equalize for one uint8 channel, written from its definition."""
  histo = np.bincount(levels.ravel(), minlength=256)
  step = (histo.sum() - histo[np.nonzero(histo)[0][-1]]) // 255
  if step == 0:
    return levels
  lut, n = [], step // 2
  for count in histo:
    lut.append(min(255, n // step))
    n += count
  return np.asarray(lut)[levels]


def test_equalize_matches_pil_algorithm():
  levels = np.random.RandomState(13).randint(40, 120, (32, 32, 3))
  levels[:8, :8, 1] = 250
  ref = np.stack([_np_equalize(levels[..., c]) for c in range(3)], -1) / 255.0
  equalize = jax.jit(A.equalize)
  np.testing.assert_allclose(equalize((levels / 255.0).astype(np.float32)), ref, atol=1e-6)
  # Two equally common levels spread to black and white.
  two = np.where(np.arange(32)[:, None, None] < 16, 50, 100) * np.ones((32, 32, 1))
  np.testing.assert_allclose(np.unique(equalize((two / 255.0).astype(np.float32))), [0, 1])


def test_gaussian_blur_impulse_response_and_constant():
  x = np.zeros((15, 15, 1), np.float32)
  x[7, 7] = 1.0
  sigma = 1.3
  g = np.exp(-np.arange(-3, 4)**2 / (2 * sigma**2))
  g /= g.sum()
  y = np.asarray(jax.jit(A.gaussian_blur, static_argnums=2)(x, sigma, 7))
  np.testing.assert_allclose(y[4:11, 4:11, 0], np.outer(g, g), atol=1e-6)
  c = np.full((15, 15, 3), 0.3, np.float32)
  np.testing.assert_allclose(A.gaussian_blur(c, 2.0), c, atol=1e-6)


# --------------------------------------------------------------- keys and policies


@pytest.mark.parametrize("name", ["random_resized_crop", "random_flip", "color_jitter",
                                  "random_gaussian_blur"])
def test_same_key_same_output_different_key_differs(name):
  # (randaugment, autoaugment and the views: test_train_augment_pipeline)
  fns = {
      "random_resized_crop": lambda k, x: A.random_resized_crop(k, x, (0.08, 1.0)),
      "random_flip": A.random_flip,
      "color_jitter": lambda k, x: A.color_jitter(k, x, 0.8, 0.8, 0.8, 0.2),
      "random_gaussian_blur": A.random_gaussian_blur,  # 32 px: a 3-tap kernel
  }
  x = _image(14, size=32)
  keys = jax.random.split(_key(5), 8)
  batched = jax.jit(jax.vmap(fns[name], in_axes=(0, None)))
  outs = np.asarray(batched(keys, x))
  assert outs.dtype == np.float32 and outs.shape == (8,) + x.shape
  assert outs.min() >= 0.0 and outs.max() <= 1.0
  np.testing.assert_array_equal(outs, batched(keys, x))
  np.testing.assert_allclose(outs[3], jax.jit(fns[name])(keys[3], x), atol=1e-5)  # = unbatched
  assert len({o.tobytes() for o in outs}) > 1


# ------------------------------------------------- policies against the TF reference

# TF's policy_v0 ("used in AutoAugment Paper"; the ImageNet policy that EfficientNet trained
# with), copied verbatim, lines 36-68 of models/official/efficientnet/autoaugment.py in
# tensorflow/tpu at commit 7dc921f846c9e4071f3884b768a7ddf521272a49 (unchanged there since
# b3293eb4c54518ca40799b42b5150347db76a453). It is kept as the published source text and
# parsed, not retyped as a tuple, so that the table the tests compare with is the reference
# itself and never a copy of supcon_jax/augment_policies.py.
TF_POLICY_V0_SOURCE = r'''
def policy_v0():
  """Autoaugment policy that was used in AutoAugment Paper."""
  # Each tuple is an augmentation operation of the form
  # (operation, probability, magnitude). Each element in policy is a
  # sub-policy that will be applied sequentially on the image.
  policy = [
      [('Equalize', 0.8, 1), ('ShearY', 0.8, 4)],
      [('Color', 0.4, 9), ('Equalize', 0.6, 3)],
      [('Color', 0.4, 1), ('Rotate', 0.6, 8)],
      [('Solarize', 0.8, 3), ('Equalize', 0.4, 7)],
      [('Solarize', 0.4, 2), ('Solarize', 0.6, 2)],
      [('Color', 0.2, 0), ('Equalize', 0.8, 8)],
      [('Equalize', 0.4, 8), ('SolarizeAdd', 0.8, 3)],
      [('ShearX', 0.2, 9), ('Rotate', 0.6, 8)],
      [('Color', 0.6, 1), ('Equalize', 1.0, 2)],
      [('Invert', 0.4, 9), ('Rotate', 0.6, 0)],
      [('Equalize', 1.0, 9), ('ShearY', 0.6, 3)],
      [('Color', 0.4, 7), ('Equalize', 0.6, 0)],
      [('Posterize', 0.4, 6), ('AutoContrast', 0.4, 7)],
      [('Solarize', 0.6, 8), ('Color', 0.6, 9)],
      [('Solarize', 0.2, 4), ('Rotate', 0.8, 9)],
      [('Rotate', 1.0, 7), ('TranslateY', 0.8, 9)],
      [('ShearX', 0.0, 0), ('Solarize', 0.8, 4)],
      [('ShearY', 0.8, 0), ('Color', 0.6, 4)],
      [('Color', 1.0, 0), ('Rotate', 0.6, 2)],
      [('Equalize', 0.8, 4), ('Equalize', 0.0, 8)],
      [('Equalize', 1.0, 4), ('AutoContrast', 0.6, 2)],
      [('ShearY', 0.4, 7), ('SolarizeAdd', 0.6, 7)],
      [('Posterize', 0.8, 2), ('Solarize', 0.6, 10)],
      [('Solarize', 0.6, 8), ('Equalize', 0.6, 1)],
      [('Color', 0.8, 6), ('Rotate', 0.4, 5)],
  ]
  return policy
'''


def _parse_tf_policy_v0(source):
  """policy_v0's list, read from its source without running it, as nested tuples."""
  (func,) = ast.parse(source).body
  assert isinstance(func, ast.FunctionDef) and func.name == "policy_v0"
  assign, ret = func.body[-2:]  # `policy = [...]` then `return policy`
  assert [t.id for t in assign.targets] == ["policy"] and ret.value.id == "policy"
  return tuple(tuple(map(tuple, sub)) for sub in ast.literal_eval(assign.value))


# 25 sub-policies of two (op, probability, level 0..10), in TF's order.
TF_POLICY_V0 = _parse_tf_policy_v0(TF_POLICY_V0_SOURCE)


# TF's distort_image_with_randaugment ops; the repo has Identity in place of Cutout.
TF_RANDAUGMENT_OPS = ("AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize",
                      "Color", "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY",
                      "TranslateX", "TranslateY", "Cutout", "SolarizeAdd")


def _tf_level_to_arg(name, level):
  """TF's level_to_arg (_MAX_LEVEL = 10); translate in the repo's unit, a fraction of the side.

  TF translates by level / 10 * 100 px (RandAugment) or * 250 px (AutoAugment); the repo's
  one deliberate deviation is level / 10 * 0.45 of the side for both.
  """
  enhance = (level / 10) * 1.8 + 0.1
  return {"Rotate": (level / 10) * 30.0, "ShearX": (level / 10) * 0.3,
          "ShearY": (level / 10) * 0.3, "TranslateX": (level / 10) * 0.45,
          "TranslateY": (level / 10) * 0.45, "Posterize": int((level / 10) * 4),
          "Solarize": int((level / 10) * 256), "SolarizeAdd": int((level / 10) * 110),
          "Color": enhance, "Contrast": enhance, "Brightness": enhance,
          "Sharpness": enhance}.get(name)


# RandAugment at the default M=9, each argument worked out by hand from TF's formulas.
RA_M9_ARGS = {
    "Rotate": 27.0,  # (9 / 10) * 30, random sign
    "ShearX": 0.27,  # (9 / 10) * 0.3, random sign
    "ShearY": 0.27,
    "TranslateX": 0.405,  # TF: (9 / 10) * 100 = 90 px; here (9 / 10) * 0.45 of the side
    "TranslateY": 0.405,
    "Posterize": 3,  # int((9 / 10) * 4) = int(3.6): 3 bits kept, a shift of 5
    "Solarize": 230,  # int((9 / 10) * 256) = int(230.4): levels >= 230 inverted
    "SolarizeAdd": 99,  # int((9 / 10) * 110) = 99 added to levels < 128
    "Color": 1.72,  # (9 / 10) * 1.8 + 0.1, no sign
    "Contrast": 1.72,
    "Brightness": 1.72,
    "Sharpness": 1.72,
}


def _policy_image():
  """16x16 levels that include both sides of the posterize / solarize boundaries."""
  levels = np.random.RandomState(16).randint(0, 256, (16, 16, 3))
  levels[0, :8, 0] = [0, 127, 128, 182, 229, 230, 231, 255]
  return levels, (levels / 255.0).astype(np.float32)


def _tf_reference(name, arg, sign, x, levels):
  """The op with TF's argument: NumPy on the 256 levels for the pixel ops, as TF does."""
  luma = x.astype(np.float64) @ np.array([0.299, 0.587, 0.114])

  def blend(degenerate):
    return np.clip(degenerate + arg * (x - degenerate), 0.0, 1.0)

  if name == "Posterize":
    shift = min(8 - arg, 7)  # TF's uint8 shift kernel clamps a shift of 8 to 7
    return ((levels >> shift) << shift) / 255.0
  if name == "Solarize":
    return np.where(levels < arg, levels, 255 - levels) / 255.0
  if name == "SolarizeAdd":
    return np.where(levels < 128, np.minimum(levels + arg, 255), levels) / 255.0
  side = x.shape[0]
  return {
      "Identity": lambda: x, "AutoContrast": lambda: A.autocontrast(x),
      "Equalize": lambda: A.equalize(x), "Invert": lambda: 1.0 - x,
      "Rotate": lambda: A.rotate(x, arg * sign), "ShearX": lambda: A.shear_x(x, arg * sign),
      "ShearY": lambda: A.shear_y(x, arg * sign),
      "TranslateX": lambda: A.translate_x(x, arg * side * sign),
      "TranslateY": lambda: A.translate_y(x, arg * side * sign),
      "Color": lambda: blend(luma[..., None]), "Contrast": lambda: blend(luma.mean()),
      "Brightness": lambda: blend(0.0), "Sharpness": lambda: A.sharpness(x, arg),
  }[name]()


_apply_op = jax.jit(P.apply_op, static_argnums=0)  # one compile per op list


def test_randaugment_m9_arguments_are_tf_arithmetic():
  for name, arg in RA_M9_ARGS.items():
    np.testing.assert_allclose(_tf_level_to_arg(name, 9), arg, rtol=1e-12, err_msg=name)
  assert base_config().augment.ra_magnitude == 9


@pytest.mark.parametrize("magnitude", [0, 5, 9, 10])
def test_randaugment_ops_match_tf(magnitude):
  names = [op.name for op in P.RANDAUGMENT_OPS]
  assert sorted(names) == sorted(set(TF_RANDAUGMENT_OPS) - {"Cutout"} | {"Identity"})
  levels, x = _policy_image()
  for i, name in enumerate(names):
    arg = RA_M9_ARGS.get(name) if magnitude == 9 else _tf_level_to_arg(name, magnitude)
    for sign in (1.0, -1.0):  # TF negates the geometric args at random, nothing else
      np.testing.assert_allclose(_apply_op(P.RANDAUGMENT_OPS, i, x, magnitude / 10, sign),
                                 _tf_reference(name, arg, sign, x, levels), atol=1e-4,
                                 err_msg=f"{name} M={magnitude} sign={sign}")


def test_randaugment_applies_one_op_at_the_configured_magnitude():
  # Every single-op RandAugment output at M=9 is one of the 32 (op, sign) references.
  levels, x = _policy_image()
  refs = np.stack([_tf_reference(op.name, RA_M9_ARGS.get(op.name), sign, x, levels)
                   for op in P.RANDAUGMENT_OPS for sign in (1.0, -1.0)])
  keys = jax.random.split(_key(8), 48)
  outs = np.asarray(jax.jit(jax.vmap(lambda k: A.randaugment(k, x, 1, 9.0)))(keys))
  err = np.abs(outs[:, None] - refs[None]).max(axis=(2, 3, 4))  # [draw, reference]
  assert (err.min(axis=1) < 1e-4).all(), err.min(axis=1)
  assert len(set(err.argmin(axis=1))) > 10  # draws pick many different ops
  # TF draws a random sign for the geometric ops: both directions must occur.
  picked = [(P.RANDAUGMENT_OPS[i // 2].name, (1.0, -1.0)[i % 2]) for i in err.argmin(axis=1)]
  assert {sign for name, sign in picked if name in GEOMETRIC} == {1.0, -1.0}, picked


GEOMETRIC = ("Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY")


def _policy_draws(monkeypatch, policy, n=8000):
  """What `policy(key, image)` asks `apply_op` for, over n keys: (the op list, an array
  [n, ops applied, 3] of (op index, level, sign)). apply_op is replaced by a recorder."""
  calls = []

  def record(ops, index, img, level, sign):
    calls.append(ops)
    drawn = jnp.stack([jnp.asarray(v, jnp.float32) for v in (index, level, sign)])
    return img.at[len(calls) - 1, 0].set(drawn)

  monkeypatch.setattr(P, "apply_op", record)
  keys = jax.random.split(_key(30), n)
  out = jax.jit(jax.vmap(lambda k: policy(k, jnp.zeros((2, 1, 3)))))(keys)
  return calls[0], np.asarray(out[:, :len(calls), 0])


def test_randaugment_draws_ops_uniformly_and_signs_both_ways(monkeypatch):
  ops, drawn = _policy_draws(monkeypatch, lambda k, x: P.randaugment(k, x, 2, 9.0))
  index, level, sign = drawn.reshape(-1, 3).T
  assert len(ops) == 16 and (level == np.float32(0.9)).all()
  for i in range(16):
    assert _binomial_ok((index == i).sum(), 1 / 16, n=len(index)), (ops[i].name, (index == i).sum())
  assert set(sign) == {1.0, -1.0}
  assert _binomial_ok((sign < 0).sum(), 0.5, n=len(sign))


def test_autoaugment_fires_each_op_with_its_probability_and_signs_both_ways(monkeypatch):
  # A sub-policy is drawn uniformly; its op j fires with its probability p (Identity, index
  # 0, otherwise) at its level, with a random sign. So each (position, op, level) has
  # probability sum(p) / 25 over the sub-policies that hold it, and (position, Identity,
  # level) sum(1 - p) / 25.
  ops, drawn = _policy_draws(monkeypatch, P.autoaugment)
  names = [op.name for op in ops]
  n, subs = len(drawn), TF_POLICY_V0
  for j in range(2):
    want = {}
    for sub in subs:
      name, p, level = sub[j]
      want[name, level] = want.get((name, level), 0.0) + p / len(subs)
      want["Identity", level] = want.get(("Identity", level), 0.0) + (1 - p) / len(subs)
    got = {}
    for index, level, _ in drawn[:, j]:
      cell = (names[int(index)], int(round(level * 10)))
      got[cell] = got.get(cell, 0) + 1
    assert set(got) <= set(want), set(got) - set(want)
    for cell, p in want.items():
      assert _binomial_ok(got.get(cell, 0), p, n=n), (j, cell, got.get(cell, 0) / n, p)
  sign = drawn[:, :, 2].ravel()
  assert _binomial_ok((sign < 0).sum(), 0.5, n=len(sign))


def test_tf_policy_v0_source_is_the_published_table():
  # Guards the parsing, not the module: the shape and a few entries of the published table
  # read straight off the source text, first, last and the one with probability 0.0.
  assert len(TF_POLICY_V0) == 25 and all(len(sub) == 2 for sub in TF_POLICY_V0)
  assert TF_POLICY_V0[0] == (("Equalize", 0.8, 1), ("ShearY", 0.8, 4))
  assert TF_POLICY_V0[16] == (("ShearX", 0.0, 0), ("Solarize", 0.8, 4))
  assert TF_POLICY_V0[-1] == (("Color", 0.8, 6), ("Rotate", 0.4, 5))
  for sub in TF_POLICY_V0:
    for _, prob, level in sub:
      assert isinstance(prob, float) and 0.0 <= prob <= 1.0
      assert isinstance(level, int) and 0 <= level <= 10


def test_autoaugment_policy_is_tf_policy_v0():
  # No op names need mapping: the module names its ops as TF's NAME_TO_FUNC does, and its
  # one substitution (Identity for Cutout) is in the RandAugment list; policy_v0 has no
  # Cutout. So the names, probabilities, levels and sub-policy order must all be TF's, as is.
  names = {op.name for op in P.AUTOAUGMENT_OPS}
  assert {n for sub in TF_POLICY_V0 for n, _, _ in sub} <= names
  assert len(P.AUTOAUGMENT_IMAGENET_POLICY) == len(TF_POLICY_V0)
  for i, (ours, tf) in enumerate(zip(P.AUTOAUGMENT_IMAGENET_POLICY, TF_POLICY_V0)):
    assert tuple(map(tuple, ours)) == tf, f"sub-policy {i}"  # exact: same literals
  # What autoaugment() draws from: op indices, float32 probabilities, levels / 10.
  ops, probs, levels = P._policy_tables()
  names = [[P.AUTOAUGMENT_OPS[i].name for i in row] for row in ops]
  assert names == [[n for n, _, _ in sub] for sub in TF_POLICY_V0]
  np.testing.assert_array_equal(probs, np.float32([[p for _, p, _ in sub]
                                                   for sub in TF_POLICY_V0]))
  np.testing.assert_allclose(levels * 10, [[m for _, _, m in sub] for sub in TF_POLICY_V0],
                             rtol=1e-6)


def test_autoaugment_ops_at_policy_levels_match_tf():
  levels, x = _policy_image()
  names = [op.name for op in P.AUTOAUGMENT_OPS]
  for name, level in sorted({(n, m) for sub in TF_POLICY_V0 for n, _, m in sub}):
    arg = _tf_level_to_arg(name, level)
    for sign in (1.0, -1.0):
      np.testing.assert_allclose(
          _apply_op(P.AUTOAUGMENT_OPS, names.index(name), x, level / 10, sign),
          _tf_reference(name, arg, sign, x, levels), atol=1e-4,
          err_msg=f"{name} level={level} sign={sign}")


def test_enhance_ops_above_one_match_pil():
  # PIL truncates its result to uint8, so 255 * ours - PIL is in [0, 1) where the two
  # degenerate images agree. PIL rounds its degenerate to a level (Color: the grey L of
  # each pixel; Contrast: int(mean of L + 0.5)), which moves the result by up to
  # (factor - 1) * 0.5 levels (0.6: with PIL's fixed-point L and the mean of rounded Ls);
  # Brightness's black is exact.
  rng = np.random.RandomState(17)
  levels = np.stack([rng.randint(150, 256, (16, 16)), rng.randint(0, 120, (16, 16)),
                     rng.randint(40, 220, (16, 16))], -1).astype(np.uint8)  # unequal means
  x = (levels / 255.0).astype(np.float32)
  image = Image.fromarray(levels)
  ops = {"Brightness": (A.brightness, 0.0), "Color": (A.color, 0.6),
         "Contrast": (A.contrast, 0.6)}
  for name, (op, rounding) in ops.items():
    for factor in (1.3, 1.72, 1.9):
      ours = np.asarray(op(x, factor), np.float64) * 255.0
      pil = np.asarray(getattr(ImageEnhance, name)(image).enhance(factor), np.float64)
      diff = ours - pil
      slack = (factor - 1.0) * rounding + 1e-3
      assert diff.min() >= -slack and diff.max() < 1.0 + slack, (name, factor, diff.min(),
                                                                  diff.max())
      assert (pil == 255).any()  # the factor clips: what the test is about


# ----------------------------------------------------------------- full pipeline


def _config(name, **overrides):
  c = base_config().augment
  c.policy = name
  for k, v in overrides.items():
    c[k] = v
  return c


def _batch(b=4, size=16):
  return np.random.RandomState(15).randint(0, 256, (b, size, size, 3)).astype(np.uint8)


@pytest.mark.parametrize("policy,n_views", [("simaugment", 2), ("randaugment", 2),
                                            ("autoaugment", 2), ("cropflip", 3)])
def test_train_augment_pipeline(policy, n_views):
  cfg = _config(policy, n_views=n_views, blur_prob=0.5)
  fn = jax.jit(A.make_train_augment(cfg, mean=MEAN, std=STD))
  images = _batch()
  out = np.asarray(fn(_key(0), images))
  assert out.shape == (4, n_views, 16, 16, 3) and out.dtype == np.float32
  pixels = out * np.asarray(STD) + np.asarray(MEAN)  # undo the normalisation
  assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5
  np.testing.assert_array_equal(out, fn(_key(0), images))  # deterministic
  assert not np.allclose(out, fn(_key(1), images))
  for v in range(1, n_views):  # views of the same image are independent
    assert not np.allclose(out[:, 0], out[:, v])
  assert not np.allclose(out[0, 0], out[1, 0])  # so are images


def test_none_policy_copies_the_eval_transform():
  images = _batch()
  out = A.make_train_augment(_config("none", n_views=3), mean=MEAN, std=STD)(_key(), images)
  ref = A.make_eval_transform(mean=MEAN, std=STD)(images)
  assert out.shape == (4, 3, 16, 16, 3)
  for v in range(3):
    np.testing.assert_allclose(out[:, v], ref, rtol=1e-6, atol=1e-6)


def test_eval_transform_normalises():
  mean, std = (102 / 255, 153 / 255, 51 / 255), (0.2, 0.25, 0.5)
  fn = jax.jit(A.make_eval_transform(mean=mean, std=std))
  constant = np.broadcast_to(np.array([102, 153, 51], np.uint8), (2, 4, 4, 3))
  np.testing.assert_allclose(fn(constant), 0.0, atol=1e-6)
  images = _batch(2, 4)
  ref = (images / 255.0 - np.asarray(mean)) / np.asarray(std)
  out = fn(images)
  assert out.dtype == jnp.float32
  np.testing.assert_allclose(out, ref, atol=1e-5)


@pytest.mark.parametrize("field,value", [("policy", "mixup"), ("n_views", 0),
                                         ("crop_scale", (0.0, 1.0)), ("ra_magnitude", 11),
                                         ("jitter_prob", 1.5), ("flip_prob", -0.1),
                                         ("ra_num_ops", -1)])
def test_bad_config_raises_naming_the_field(field, value):
  with pytest.raises(ValueError, match=field):
    A.make_train_augment(_config("simaugment", **{field: value}), mean=MEAN, std=STD)


@pytest.mark.parametrize("field,value,message", [
    ("small_crop_scale", (0.2, 0.1), "augment.small_crop_scale=(0.2, 0.1): expected (lo, hi)"),
    ("small_size", 0, "augment.small_size=0: expected a side in pixels >= 1"),
    ("policy", "none", "augment.policy='none': expected a cropping policy with small_views")])
def test_bad_multi_crop_fields_raise_naming_the_field(field, value, message):
  cfg = _config("simaugment", small_views=2, small_size=8, small_crop_scale=(0.05, 0.14))
  setattr(cfg, field, value)
  with pytest.raises(ValueError, match=re.escape(message)):
    A.check_config(cfg)


def test_bad_mean_std_and_images_raise():
  with pytest.raises(ValueError, match="mean"):
    A.make_eval_transform(mean=(0.5, 0.5), std=(0.2,))
  with pytest.raises(ValueError, match="images"):
    A.make_eval_transform(mean=MEAN, std=STD)(np.zeros((2, 4, 4, 1), np.uint8))


# ------------------------------------------------- flip_prob and random decisions


@pytest.mark.parametrize("policy", ["simaugment", "randaugment", "autoaugment", "cropflip"])
def test_every_policy_flips_with_flip_prob(policy, monkeypatch):
  # Crop scale 1 with ratios around 1 only fits the whole image, and the policies' own
  # ops are off (AutoAugment's cannot be, so it is stubbed): a view is the image or its
  # mirror, and flip_prob 0 / 1 must give all of one.
  monkeypatch.setattr(A, "autoaugment", lambda key, img: img)
  images = _batch(2, 8)
  for flip_prob in (0.0, 1.0):
    cfg = _config(policy, n_views=8, crop_scale=(1.0, 1.0), flip_prob=flip_prob,
                  jitter_prob=0.0, grayscale_prob=0.0, blur_prob=0.0, ra_num_ops=0)
    # Eager: its primitives compile once for all four policies, a jit once per config.
    fn = A.make_train_augment(cfg, mean=(0.0,) * 3, std=(1.0,) * 3)
    out = np.asarray(fn(_key(), images))
    ref = images / 255.0 if flip_prob == 0 else images[:, :, ::-1] / 255.0
    np.testing.assert_allclose(out, np.broadcast_to(ref[:, None], out.shape), atol=1e-6,
                               err_msg=f"flip_prob={flip_prob}")


DRAWS = 4000  # single-image views in one vmapped call


def _binomial_ok(count, p, n=DRAWS, sds=4.5):
  """`count` of `n` Bernoulli(p) draws within `sds` standard deviations of n * p."""
  return abs(count - n * p) <= sds * math.sqrt(n * p * (1 - p))


def _simaugment_draws(image_levels, **fields):
  """DRAWS simaugment views of one uint8 image, unnormalised, crop the identity."""
  cfg = _config("simaugment", n_views=DRAWS, crop_scale=(1.0, 1.0), **fields)
  fn = jax.jit(A.make_train_augment(cfg, mean=(0.0,) * 3, std=(1.0,) * 3))
  return np.asarray(fn(_key(21), image_levels[None].astype(np.uint8)))[0], cfg


def test_simaugment_flip_grayscale_blur_at_their_probabilities():
  # Jitter off; each other decision leaves its own mark. A white row over a black row:
  # any blur (sigma >= 0.1 gives the neighbours weight >= exp(-50) > 0) lifts black above 0.
  # Below, red left / blue right: grey makes a pixel's channels equal, the flip puts blue
  # (or its luma 0.27, against red's 0.39) on the left.
  levels = np.zeros((20, 20, 3))  # >= 20 px: a 3-tap blur kernel
  levels[0] = 255
  levels[2:, :10] = (204, 51, 51)
  levels[2:, 10:] = (51, 51, 204)
  views, cfg = _simaugment_draws(levels, jitter_prob=0.0, blur_prob=0.5)
  assert (cfg.flip_prob, cfg.grayscale_prob) == (0.5, 0.2)  # the defaults
  probe = views[:, 12, 3]  # inside the red half, away from edges the blur could reach
  grey = np.abs(probe - probe[:, :1]).max(axis=1) < 1e-6
  flipped = probe[:, 0] < 0.33
  blurred = views[:, 1, 10].max(axis=1) > 0
  for decision, hits, p in (("flip", flipped, cfg.flip_prob),
                            ("grayscale", grey, cfg.grayscale_prob),
                            ("blur", blurred, cfg.blur_prob)):
    assert _binomial_ok(hits.sum(), p), (decision, hits.sum(), DRAWS * p)


def test_simaugment_jitter_at_its_probability():
  levels = np.random.RandomState(18).randint(30, 226, (4, 4, 3))
  views, cfg = _simaugment_draws(levels, flip_prob=0.0, grayscale_prob=0.0, blur_prob=0.0)
  assert cfg.jitter_prob == 0.8
  jittered = np.abs(views - levels / 255.0).max(axis=(1, 2, 3)) > 1e-4
  assert _binomial_ok(jittered.sum(), cfg.jitter_prob), (jittered.sum(), DRAWS * 0.8)


def test_color_jitter_factor_ranges():
  # All four ops in their random order, on two images that share each key (so the same
  # factors): on greys hue and saturation do nothing and brightness and contrast commute,
  # so two greys around their mean 0.5 give b (their sum) and c; every op scales a
  # colour's channel range by its factor but hue, which keeps the range, and all but hue
  # keep its hue. Contrast strength 1.5 tests the max(0, 1 - s).
  n = 2000
  images = np.array([[[[0.45] * 3, [0.55] * 3]], [[[0.42, 0.38, 0.40]] * 2]], np.float32)
  one_key = jax.vmap(lambda k, x: A.color_jitter(k, x, 0.4, 1.5, 0.4, 0.1), in_axes=(None, 0))
  out = jax.jit(jax.vmap(one_key, in_axes=(0, None)))(jax.random.split(_key(22), n), images)
  out = np.asarray(out, np.float64)  # [n, 2 images, 1, 2, 3]
  g1, g2 = out[:, 0, 0, 0, 0], out[:, 0, 0, 1, 0]  # b (0.5 -+ 0.05 c)
  b = g1 + g2
  c = (g2 - g1) / (0.1 * b)
  colour = out[:, 1, 0, 0]
  s = np.ptp(colour, axis=1) / (b * c * 0.04)
  h0 = colorsys.rgb_to_hsv(*images[1, 0, 0])[0]
  h = np.array([(colorsys.rgb_to_hsv(*p)[0] - h0 + 0.5) % 1.0 - 0.5 for p in colour])
  steady = c > 0.2  # the colour's range shrinks with c, and float32 rounding grows
  factors = {"brightness": (b, 0.6, 1.4), "contrast": (c, 0.0, 2.5),
             "saturation": (s[steady], 0.6, 1.4), "hue": (h[steady], -0.1, 0.1)}
  for name, (f, lo, hi) in factors.items():
    span = hi - lo
    assert f.min() >= lo - 1e-4 and f.max() <= hi + 1e-4, (name, f.min(), f.max())
    # Uniform: the extremes of >1800 draws lie within 1% of the bounds (fails w.p. < 1e-8).
    assert f.min() < lo + 0.01 * span and f.max() > hi - 0.01 * span, (name, f.min(), f.max())
    assert abs(f.mean() - (lo + hi) / 2) < 4.5 * span / math.sqrt(12 * len(f)), (name, f.mean())
