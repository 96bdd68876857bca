"""Common image corruptions (Hendrycks & Dietterich, 2019) on the device, for robustness.

"Benchmarking Neural Network Robustness to Common Corruptions and Perturbations" defines
ImageNet-C / CIFAR-10-C: fifteen corruptions at five severities (BENCHMARK), and four
extra ones (EXTRA) to validate on. This package recreates the fifteen and three of the
extras in JAX so that a trained classifier can be scored on corrupted copies of any dataset
(an image folder, 16x16 digits, 32x32 CIFAR-size images, ImageNet crops) without
TensorFlow, SciPy, scikit-image, OpenCV or ImageMagick (frost reads its photographs with
PIL): every op runs under `jax.jit` and `jax.vmap`, on the accelerator. They are grouped
as the reference groups them: noise.py, blur.py, weather.py, digital.py (and jpeg.py),
each with its parameter tables.

Each op takes a key, one float32 image [H, W, C] in [0, 1] (C = 1 or 3) and a static
severity 1..5, and returns the same shape in [0, 1]; `corrupt` maps a uint8 batch. Images
whose shorter side is under 85 pixels get CIFAR-10-C's parameters (the reference's
make_cifar_c.py, for 32 px), larger ones ImageNet-C's (make_imagenet_c.py, for 224 px).

Ops and how each departs from the reference (details in each docstring):
gaussian_noise, impulse_noise, speckle_noise: exact but for the random number generator;
shot_noise: NumPy's Poisson samplers, with a fixed number of rounds (so per image);
defocus_blur, zoom_blur, gaussian_blur: exact up to float32 arithmetic;
glass_blur: exact, its 8-bit levels as exact arithmetic decides them (not float64's noise);
motion_blur: ImageMagick's one-sided Gaussian line kernel, in float, without its PNG trip;
snow: the reference's snow layer and blend, its blur motion_blur's (so in float);
frost: exact, where the reference's frost photographs are installed (`missing`);
fog: the same diamond-square plasma, sized to the next power of two >= the image;
brightness, contrast, saturate: exact;
elastic_transform: OpenCV's fixed-point affine warp and scipy's map_coordinates, in float32;
pixelate: PIL's BOX down- and up-scaling as matrices, without PIL's 8-bit rounding;
jpeg_compression: libjpeg's coder exactly (4:2:0, integer DCT), decoded in float.
Random ops whose draws are many (glass_blur, snow, frost, elastic_transform) are
`base.RandomOp`s: their draws and their deterministic rest apart. Spatter, the fourth
extra, is not made here (TFDS has it). The reference stores outputs with np.uint8
(truncation); `corrupt` rounds to nearest.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from supcon_jax.checks import one_of
from supcon_jax.corruptions import base, blur, digital, jpeg, noise, weather
from supcon_jax.corruptions.base import CIFAR, IMAGENET, IMAGENET_FROM, SEVERITIES, benchmark_for
from supcon_jax.corruptions.blur import (
  defocus_blur,
  gaussian_blur,
  glass_blur,
  motion_blur,
  zoom_blur,
)
from supcon_jax.corruptions.digital import contrast, elastic_transform, pixelate, saturate
from supcon_jax.corruptions.jpeg import jpeg_compression
from supcon_jax.corruptions.noise import gaussian_noise, impulse_noise, shot_noise, speckle_noise
from supcon_jax.corruptions.weather import brightness, fog, frost, snow

__all__ = ["BENCHMARK", "CIFAR", "CORRUPTIONS", "EXTRA", "IMAGENET", "IMAGENET_FROM",
           "SEVERITIES", "SEVERITY_PARAMS", "benchmark_for", "brightness", "contrast",
           "corrupt", "defocus_blur", "elastic_transform", "fog", "frost", "gaussian_blur",
           "gaussian_noise", "glass_blur", "impulse_noise", "jpeg_compression", "missing",
           "motion_blur", "pixelate", "saturate", "shot_noise", "snow", "speckle_noise",
           "zoom_blur"]

# The benchmark's fifteen, in the reference's order (the mean corruption error is over
# these), and its four extras.
BENCHMARK = ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur",
             "motion_blur", "zoom_blur", "snow", "frost", "fog", "brightness", "contrast",
             "elastic_transform", "pixelate", "jpeg_compression")
EXTRA = ("speckle_noise", "gaussian_blur", "spatter", "saturate")

_OPS: dict[str, Callable[[jax.Array, jax.Array, int], jax.Array]] = {
    name: globals()[name] for name in BENCHMARK + EXTRA if name != "spatter"}
CORRUPTIONS: tuple[str, ...] = tuple(_OPS)  # those made here, in the reference's order

# {"CIFAR-10-C" | "ImageNet-C": {corruption: its parameter at severities 1..5}}
SEVERITY_PARAMS: base.Tables = {
    benchmark: {name: p for group in (noise, blur, weather, digital, jpeg)
                for name, p in group.TABLES[benchmark].items()}
    for benchmark in (CIFAR, IMAGENET)}


def missing(name: str, image_shape: tuple[int, ...]) -> str | None:
  """Why corruption `name` cannot be made here on images of `image_shape` ([H, W, ...]),
  or None: frost needs the reference's photographs, the others nothing."""
  return weather.frost_missing(image_shape) if name == "frost" else None


def corrupt(name: str, severity: int, key: jax.Array, images: jax.Array) -> jax.Array:
  """uint8 [N, H, W, C] -> corrupted uint8 (rounded); image i uses split(key, N)[i]."""
  one_of("corruption", name, CORRUPTIONS)
  base.check_severity(severity)
  if images.ndim != 4 or images.dtype != jnp.uint8:
    raise ValueError(f"images must be uint8 [N, H, W, C], got {images.dtype} {images.shape}")
  why = missing(name, images.shape[1:])
  if why:
    raise ValueError(f"corruption {name}: {why}")
  op = _OPS[name]
  keys = jax.random.split(key, images.shape[0])
  x = images.astype(jnp.float32) / 255.0
  out = jax.vmap(lambda k, img: op(k, img, severity))(keys, x)
  return jnp.round(out * 255.0).astype(jnp.uint8)
