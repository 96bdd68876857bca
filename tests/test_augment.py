"""Tests of supcon_jax.augment: each op against NumPy references or exact properties."""

from __future__ import annotations

import colorsys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

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
    "solarize 1": lambda x: A.solarize(x, 1.0),
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


def test_randaugment_ops_at_level_zero_and_one():
  # Increasing convention: at M=0 every op with a magnitude is the identity, whatever its
  # sign; at M=10 every op but Identity changes the image.
  x = _image(2)
  op = jax.jit(lambda i, level, sign: P.apply_op(P.RANDAUGMENT_OPS, i, x, level, sign))
  magnitude_free = {"AutoContrast": A.autocontrast(x), "Equalize": A.equalize(x),
                    "Invert": 1 - x}
  for i, o in enumerate(P.RANDAUGMENT_OPS):
    for sign in (1.0, -1.0):
      np.testing.assert_allclose(op(i, 0.0, sign), magnitude_free.get(o.name, x), atol=2e-5,
                                 err_msg=o.name)
    assert (o.name == "Identity") == np.allclose(op(i, 1.0, 1.0), x, atol=1e-3), o.name


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


def _np_resized_crop(x, top, left, h, w):
  """Independent float64 reference: crop, then bilinear resize, align_corners=False."""
  crop = x[top:top + h, left:left + w].astype(np.float64)

  def axis_weights(n_in, n_out):
    src = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
    m = np.zeros((n_out, n_in))
    lo = np.floor(src).astype(int)
    hi = np.minimum(lo + 1, n_in - 1)
    m[np.arange(n_out), lo] += 1 - (src - lo)
    m[np.arange(n_out), hi] += src - lo
    return m

  out_h, out_w = x.shape[:2]
  return np.einsum("ij,jkc,lk->ilc", axis_weights(h, out_h), crop, axis_weights(w, out_w))


def test_resized_crop_matches_numpy_bilinear():
  x = _image(7)
  for box in [(0, 0, 8, 8), (3, 5, 10, 7), (0, 1, 16, 5)]:
    np.testing.assert_allclose(A.resized_crop(x, *box), _np_resized_crop(x, *box), atol=1e-5)


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


def test_autoaugment_policy_table():
  assert len(P.AUTOAUGMENT_IMAGENET_POLICY) == 25
  names = {op.name for op in P.AUTOAUGMENT_OPS}
  for sub in P.AUTOAUGMENT_IMAGENET_POLICY:
    assert len(sub) == 2
    for name, prob, magnitude in sub:
      assert name in names and 0 <= prob <= 1 and 0 <= magnitude <= 9


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
                                         ("jitter_prob", 1.5), ("ra_num_ops", -1)])
def test_bad_config_raises_naming_the_field(field, value):
  with pytest.raises(ValueError, match=field):
    A.make_train_augment(_config("simaugment", **{field: value}), mean=MEAN, std=STD)


def test_bad_mean_std_and_images_raise():
  with pytest.raises(ValueError, match="mean"):
    A.make_eval_transform(mean=(0.5, 0.5), std=(0.2,))
  with pytest.raises(ValueError, match="images"):
    A.make_eval_transform(mean=MEAN, std=STD)(np.zeros((2, 4, 4, 1), np.uint8))
