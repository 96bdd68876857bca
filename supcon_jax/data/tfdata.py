"""tf.data pipelines behind the TFDS and image-folder sources.

The one module of data/ that starts TensorFlow as it loads (through tf_setup); folder.py and
tfds.py import it inside functions, so the in-memory path never loads TensorFlow.

Determinism: epoch e reads this host's records shuffled with seed s + e, s being the run's
"data" stream as an integer (rngs.host_seed); example i of that order is cropped with the
stateless seed (s + e, i). A run resumed at step k rebuilds epoch k // steps_per_epoch and
skips the records of its first batches before decoding them, so it produces exactly the
batches an uninterrupted run would (with
data.bad_images="skip", unless images were skipped before the resume point in that epoch:
the skipped records are not decoded, so the gaps they left are not reproduced).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import numpy as np

from supcon_jax import rngs, sharding, tf_setup
from supcon_jax.data.base import EVAL_CROP, Crops, Source

tf = tf_setup.tensorflow()

ASPECT_RANGE = (3 / 4, 4 / 3)  # Inception-style random-resized crop
RATIOS = (1, 2, 4, 8)  # the reductions libjpeg decodes at (1/r scale, in the DCT domain)


def decode(data: tf.Tensor) -> tf.Tensor:
  """An encoded image (JPEG, PNG, ...) as uint8 [H, W, 3]."""
  return tf.io.decode_image(data, channels=3, dtype=tf.uint8, expand_animations=False)


def _to_uint8(image: tf.Tensor) -> tf.Tensor:
  return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)


def usable_ratios(shorter_side: int | None, size: int) -> tuple[int, ...]:
  """The RATIOS worth setting up for crops of `size` pixels when no image's shorter side
  exceeds `shorter_side` (None: not known, all of them); with 1 alone, no example pays for
  choosing one."""
  return tuple(r for r in RATIOS if shorter_side is None or shorter_side >= r * size or r == 1)


def _ratio_index(side: tf.Tensor, needed: int, ratios: Sequence[int]) -> tf.Tensor:
  """The index in `ratios` of the largest r with side >= r * needed: decoded at 1/r, a side of
  `side` pixels still has at least `needed`, so nothing is enlarged that full scale would not
  enlarge, and what is enlarged anyway (side < needed) is decoded at full scale."""
  larger = tf.constant(ratios[1:], tf.int32) * needed
  return tf.reduce_sum(tf.cast(tf.cast(side, tf.int32) >= larger, tf.int32))


def _decode_jpeg(encoded: tf.Tensor, index: tf.Tensor, window: tf.Tensor,
                 ratios: Sequence[int]) -> tf.Tensor:
  """`window` [top, left, height, width] of a JPEG decoded at 1/ratios[index] scale, the
  window in that scale's pixels. libjpeg reduces in the DCT domain (an image of
  ceil(H / r) x ceil(W / r), whose pixel j is the mean of full-scale pixels [j r, (j + 1) r)),
  skipping most of the inverse DCT; the ratio must be static, hence one op per ratio."""
  decodes = [functools.partial(tf.image.decode_and_crop_jpeg, encoded, window, channels=3,
                               ratio=r) for r in ratios]
  return decodes[0]() if len(decodes) == 1 else tf.switch_case(index, decodes)


def _by_format(encoded: tf.Tensor, jpeg: bool | None, if_jpeg: Callable[[], Any],
               otherwise: Callable[[], Any]) -> Any:
  """if_jpeg() for a JPEG, otherwise() for other formats; `jpeg` True or False says which
  every image is (a source that knows spares each example the test), None tests each."""
  if jpeg is None:
    return tf.cond(tf.io.is_jpeg(encoded), if_jpeg, otherwise)
  return if_jpeg() if jpeg else otherwise()


def _scaled_resize(image: tf.Tensor, full_hw: tf.Tensor, ratio: int | tf.Tensor,
                   new_hw: tf.Tensor, size: int) -> tf.Tensor:
  """The central size x size of an image of full_hw [H, W] resized to new_hw (antialiased
  bilinear), from `image`: the same picture decoded at 1/ratio.

  Full scale, this is tf.image.resize(antialias=True) and a central crop. The scale is taken
  from full_hw / ratio, not from the decoded size ceil(full_hw / ratio), so a partial last
  block does not stretch the picture; only the central crop's pixels are computed. An image
  of size x size kept at that size passes untouched.
  """
  def scaled():
    top_left = tf.cast((new_hw - size) // 2, tf.float32)
    scale = tf.cast(new_hw * ratio, tf.float32) / tf.cast(full_hw, tf.float32)
    return _to_uint8(tf.raw_ops.ScaleAndTranslate(
        images=tf.cast(image, tf.float32)[None], size=[size, size], scale=scale,
        translation=-top_left, kernel_type="triangle", antialias=True)[0])

  untouched = tf.reduce_all(tf.concat([full_hw, new_hw], axis=0) == size)
  return tf.ensure_shape(tf.cond(untouched, lambda: image, scaled), [size, size, 3])


def _centre_hw(hw: tf.Tensor, size: int) -> tf.Tensor:
  """The size the evaluation crop resizes an image of hw [H, W] to: shorter side to
  size / EVAL_CROP, aspect kept."""
  hw = tf.cast(hw, tf.float32)
  return tf.cast(tf.round(hw * round(size / EVAL_CROP) / tf.reduce_min(hw)), tf.int32)


def resize(image: tf.Tensor, size: int) -> tf.Tensor:
  """To size x size (aspect not kept, antialiased bilinear); images of that size pass."""
  hw = tf.shape(image)[:2]
  return _scaled_resize(image, hw, 1, tf.fill([2], size), size)


def center_crop(image: tf.Tensor, size: int) -> tf.Tensor:
  """Shorter side to size / EVAL_CROP (aspect kept), then the central size x size."""
  hw = tf.shape(image)[:2]
  return _scaled_resize(image, hw, 1, _centre_hw(hw, size), size)


def _sample_box(shape: tf.Tensor, seed: tf.Tensor, scale: Sequence[float]):
  begin, extent, _ = tf.image.stateless_sample_distorted_bounding_box(
      shape, tf.constant([[[0.0, 0.0, 1.0, 1.0]]]), seed=seed, min_object_covered=0.0,
      aspect_ratio_range=ASPECT_RANGE, area_range=tuple(scale), max_attempts=10,
      use_image_if_no_bounding_boxes=True)
  return begin[:2], extent[:2]


def crop_boxes(shape: tf.Tensor, seeds: tf.Tensor,
               scale: Sequence[float]) -> tuple[tf.Tensor, tf.Tensor]:
  """The random-resized crop boxes of an image of `shape` [H, W, ...], one per row of `seeds`:
  (top-left [V, 2], height-width [V, 2]) in pixels, int32. Views draw independently, so the
  first view's box is the same however many views there are."""
  boxes = [_sample_box(shape, seeds[v], scale) for v in range(seeds.shape[0])]
  return tf.stack([b for b, _ in boxes]), tf.stack([e for _, e in boxes])


def _reduced_edges(edges: tf.Tensor, r: tf.Tensor) -> tf.Tensor:
  """Pixel edges at 1/r scale, rounded to the nearest: reduced pixel j covers full-scale
  pixels [j r, (j + 1) r), so an edge moves by at most r / 2 full-scale pixels, a box of at
  least r * size pixels keeps at least size, and an edge inside the image stays inside the
  reduced one (ceil(H / r) pixels)."""
  return (2 * edges + r) // (2 * r)


# A group of random-resized crops: (seeds [V, 2], side in pixels, area scale (lo, hi)).
CropGroup = tuple[tf.Tensor, int, Sequence[float]]


def _group_boxes(shape: tf.Tensor, groups: Sequence[CropGroup]):
  """The boxes of every group, concatenated: (top-left [V, 2], height-width [V, 2])."""
  boxes = [crop_boxes(shape, seeds, scale) for seeds, _, scale in groups]
  return tf.concat([b for b, _ in boxes], axis=0), tf.concat([e for _, e in boxes], axis=0)


def jpeg_window(encoded: tf.Tensor, groups: Sequence[CropGroup], ratios: Sequence[int]):
  """The window of a JPEG that holds every crop box, decoded at the largest of `ratios` every
  box allows (each keeping its group's side), and each box's top-left and bottom-right
  [V, 2] in that window's pixels."""
  begin, extent = _group_boxes(tf.image.extract_jpeg_shape(encoded), groups)
  index, top_left, bottom_right = 0, begin, begin + extent
  if len(ratios) > 1:
    first, index = 0, len(ratios) - 1
    for seeds, size, _ in groups:
      rows = extent[first:first + seeds.shape[0]]
      index = tf.minimum(index, _ratio_index(tf.reduce_min(rows), size, ratios))
      first += seeds.shape[0]
    r = tf.gather(ratios, index)
    top_left, bottom_right = _reduced_edges(top_left, r), _reduced_edges(bottom_right, r)
  origin = tf.reduce_min(top_left, axis=0)
  window = tf.concat([origin, tf.reduce_max(bottom_right, axis=0) - origin], axis=0)
  return _decode_jpeg(encoded, index, window, ratios), top_left - origin, bottom_right - origin


def _image_window(encoded: tf.Tensor, groups: Sequence[CropGroup]):
  """jpeg_window for other formats: the whole image, decoded at full scale."""
  image = decode(encoded)
  begin, extent = _group_boxes(tf.shape(image), groups)
  return image, begin, begin + extent


def random_crops(encoded: tf.Tensor, seeds: tf.Tensor, size: int, scale: Sequence[float], *,
                 jpeg: bool | None = None, ratios: Sequence[int] = RATIOS,
                 small: CropGroup | None = None) -> tf.Tensor | tuple[tf.Tensor, tf.Tensor]:
  """One random-resized crop (area fraction in `scale`) per row of `seeds`: [V, size, size, 3].

  The image is decoded once for all crops; a JPEG only within the box that holds them all,
  and at 1/2, 1/4 or 1/8 scale (those of `ratios`) where every crop keeps at least its side
  in pixels there. `jpeg`: whether every image is a JPEG (True), none is (False), or each is
  tested (None). `small`: multi-crop's small crops (seeds, side, scale), from the same decode;
  then (crops, small crops). Bilinear resizing without antialiasing, as SimCLR's and
  big_vision's Inception crops: most crops are enlarged, and antialiasing the others would
  cost half the host's throughput.
  """
  groups = [(seeds, size, scale)] + ([small] if small is not None else [])
  image, top_left, bottom_right = _by_format(
      encoded, jpeg, lambda: jpeg_window(encoded, groups, ratios),
      lambda: _image_window(encoded, groups))
  # ResizeBilinear interpolates float32 faster than uint8, even counting the cast (measured:
  # 0.48 ms against 0.78 for two 224-px views).
  out, v = [], 0
  for group_seeds, side, _ in groups:
    crops = []
    for _ in range(group_seeds.shape[0]):
      box = image[top_left[v, 0]:bottom_right[v, 0], top_left[v, 1]:bottom_right[v, 1]]
      crops.append(tf.image.resize(tf.cast(box, tf.float32), [side, side]))
      v += 1
    out.append(_to_uint8(tf.stack(crops)))
  return out[0] if small is None else tuple(out)


def eval_image(encoded: tf.Tensor, size: int, host_resize: bool, *, jpeg: bool | None = None,
               ratios: Sequence[int] = RATIOS) -> tf.Tensor:
  """The evaluation transform: centre crop (host_resize) or a plain resize to size x size.

  A JPEG is decoded at the largest of `ratios` that keeps the resize a reduction (the shorter
  side at least the size it is resized to); `jpeg` as for random_crops.
  """
  def reduced():
    hw = tf.image.extract_jpeg_shape(encoded)[:2]
    new_hw = _centre_hw(hw, size) if host_resize else tf.fill([2], size)
    needed = round(size / EVAL_CROP) if host_resize else size
    index = _ratio_index(tf.reduce_min(hw), needed, ratios)
    r = tf.gather(ratios, index)
    image = _decode_jpeg(encoded, index, tf.concat([[0, 0], -(-hw // r)], axis=0), ratios)
    return _scaled_resize(image, hw, r, new_hw, size)

  def whole():
    image = decode(encoded)
    return center_crop(image, size) if host_resize else resize(image, size)

  return _by_format(encoded, jpeg, reduced, whole)


def orient(image: tf.Tensor, orientation: tf.Tensor) -> tf.Tensor:
  """`image` turned upright by its EXIF orientation code (1-8; 1 and unknown: unchanged).

  The same transposes as PIL's `ImageOps.exif_transpose`.
  """
  turns = [lambda: image,
           lambda: tf.image.flip_left_right(image),  # 2
           lambda: tf.image.rot90(image, 2),  # 3
           lambda: tf.image.flip_up_down(image),  # 4
           lambda: tf.image.transpose(image),  # 5
           lambda: tf.image.rot90(image, 3),  # 6: 90 degrees clockwise
           lambda: tf.image.rot90(tf.image.transpose(image), 2),  # 7: the anti-diagonal
           lambda: tf.image.rot90(image, 1)]  # 8: 90 degrees counter-clockwise
  index = tf.where((orientation >= 1) & (orientation <= 8), orientation - 1, 0)
  return tf.switch_case(tf.cast(index, tf.int32), turns)


def decode_all(records: tf.data.Dataset, size: int,
               host_resize: bool) -> tuple[np.ndarray, np.ndarray]:
  """Every (encoded image, label) record decoded with the evaluation transform, as NumPy."""
  ds = records.map(lambda data, label: (eval_image(data, size, host_resize), label),
                   num_parallel_calls=tf.data.AUTOTUNE).batch(1024)
  chunks = list(ds.as_numpy_iterator())
  if not chunks:
    raise ValueError("the split is empty")
  return np.concatenate([c[0] for c in chunks]), np.concatenate([c[1] for c in chunks])


def _host_limits(counts: Sequence[int], max_examples: int | None) -> list[int]:
  """How many of its records each process evaluates: `max_examples` shared out evenly."""
  if max_examples is None:
    return list(counts)
  n = len(counts)
  return [min(c, max_examples // n + (i < max_examples % n)) for i, c in enumerate(counts)]


class TfDataSource(Source):
  """This host's records through tf.data, assembled into global batches."""

  def __init__(self, records: tf.data.Dataset, *, host_counts: Sequence[int],
               num_classes: int, data_config, global_batch: int, mesh: jax.sharding.Mesh,
               seed: int, shuffle_buffer: int, crops: Crops,
               load: Callable[[tf.Tensor], tf.Tensor] | None = None,
               skip_bad: bool = False, name_of: Callable[[bytes], str] | None = None,
               orientation: Callable[[tf.Tensor], tf.Tensor] | None = None, skipped: int = 0,
               jpeg: bool | None = None, shorter_side: int | None = None):
    """records: this host's (key, label int32) in a fixed order; `load(key)` gives the
    encoded image (key is the encoded image when load is None, a path for folders).
    host_counts: records of every process. shuffle_buffer: records in the shuffle buffer
    (all of them where records are sorted by class, e.g. file paths). crops: the training
    crops drawn here when data_config.host_resize. name_of: key -> file name; given, a
    decode failure is traced back to its file and raised as a ValueError naming it.
    orientation: key -> EXIF orientation code, applied after decoding. skipped: records
    left out as unreadable before this source was made. jpeg: whether every image is a JPEG
    (True), none is (False) or unknown (None: each is tested). shorter_side: the largest
    shorter side of any image, where known: the reduced JPEG decodes no image can use are
    left out of the graph."""
    self._host_batch = sharding.host_batch_size(global_batch, mesh)
    self.num_examples, self.num_classes = int(sum(host_counts)), num_classes
    size = data_config.image_size
    self.image_shape = (size, size, 3)
    self.global_batch, self.skipped = global_batch, skipped
    self._records, self._host_counts = records, list(host_counts)
    self._config, self._mesh = data_config, mesh
    # tf.data's shuffles and stateless crops take integer seeds: the run's "data" stream
    # (epoch e: this base + e) and "eval_sample" stream, as integers.
    self._seed = rngs.host_seed(seed, "data")
    self._sample_seed = rngs.host_seed(seed, "eval_sample")
    self._load = load or (lambda key: key)
    self._skip_bad, self._name_of = skip_bad, name_of
    self._shuffle_buffer, self._crops, self._orientation = shuffle_buffer, crops, orientation
    self._decoding = {"jpeg": jpeg, "ratios": usable_ratios(shorter_side, size)}

  def _epoch_seed(self, epoch):
    return self._seed + epoch

  def _epoch_order(self, epoch_seed) -> tf.data.Dataset:
    return self._records.shuffle(self._shuffle_buffer, seed=epoch_seed,
                                 reshuffle_each_iteration=False)

  def _upright(self, image, key):
    return image if self._orientation is None else orient(image, self._orientation(key))

  def _train_example(self, index, key, label, epoch_seed):
    c, crops = self._config, self._crops
    if not c.host_resize:
      image = eval_image(self._load(key), c.image_size, False, **self._decoding)
      return {"image": self._upright(image, key), "label": label, "index": index}
    # Crop v of this host's example `index` has its own stateless seed (one view: as before);
    # small crop v has seed -(its number) - 1, so no two crops share one.
    example = index * jax.process_count() + jax.process_index()
    rows = lambda n: example * n + tf.range(n, dtype=tf.int64)
    seeds = lambda n, second: tf.stack([tf.fill([n], epoch_seed), second], axis=1)
    small = None
    if crops.small_views:
      m = crops.small_views
      small = (seeds(m, -rows(m) - 1), crops.small_size, crops.small_scale)
    image = random_crops(self._load(key), seeds(crops.views, rows(crops.views)), c.image_size,
                         crops.scale, small=small, **self._decoding)
    out = {"label": label, "index": index}
    if small is not None:
      image, out["small"] = image[0], self._upright(image[1], key)
    out["image"] = self._upright(image if crops.views > 1 else image[0], key)
    return out

  def _eval_example(self, key, label):
    image = eval_image(self._load(key), self._config.image_size, self._config.host_resize,
                       **self._decoding)
    return {"image": self._upright(image, key), "label": label, "mask": tf.constant(1.0)}

  def _finish(self, ds: tf.data.Dataset) -> tf.data.Dataset:
    options = tf.data.Options()
    options.deterministic = True
    return ds.prefetch(self._config.prefetch).with_options(options)

  def _train_dataset(self, start_step: int, steps_per_epoch: int) -> tf.data.Dataset:
    hb = self._host_batch
    start_epoch, skip = divmod(start_step, steps_per_epoch)

    def epoch(e):
      es = self._epoch_seed(e)
      # A second pass of the same order refills the epoch after skipped unreadable images.
      ds = self._epoch_order(es).repeat(2).enumerate()
      first = tf.where(e == start_epoch, tf.constant(skip, tf.int64), 0)
      ds = ds.skip(first * hb)
      ds = ds.map(lambda i, rec: self._train_example(i, *rec, es),
                  num_parallel_calls=tf.data.AUTOTUNE)
      if self._skip_bad:
        ds = ds.ignore_errors()
      ds = ds.batch(hb, drop_remainder=True).take(steps_per_epoch - first)
      # A marker batch (index -1) ends every epoch, so the reader regains control even when
      # an epoch yields no batch at all (every image gone): a clear stop, never a spin.
      end = {k: tf.fill(v.shape, tf.constant(-1 if k == "index" else 0, v.dtype))
             for k, v in ds.element_spec.items()}
      return ds.concatenate(tf.data.Dataset.from_tensors(end))

    return self._finish(tf.data.Dataset.range(start_epoch, 2**62).flat_map(epoch))

  def _name_culprit(self, err: tf.errors.OpError, order: tf.data.Dataset, first: int,
                    count: int) -> None:
    """Decodes the records of the failed batch one by one to name the bad file."""
    if self._name_of is None:
      raise err
    for key, _ in order.skip(first).take(count).as_numpy_iterator():
      try:
        decode(self._load(key))
      except tf.errors.OpError as bad:
        raise ValueError(f"cannot read image {self._name_of(key)}: {bad.message} (set "
                         "data.bad_images='skip' to skip unreadable images)") from err
    raise err

  def _count_skipped(self, n: int) -> None:
    if n > 0:
      self.skipped += int(n)
      logging.warning("skipped %d unreadable image(s); %d so far", n, self.skipped)

  def train_batches(self, start_step: int = 0) -> Iterator[dict[str, jax.Array]]:
    spe, hb = self._check_steps(), self._host_batch
    batches = self._train_dataset(start_step, spe).as_numpy_iterator()
    step, expected = start_step, (start_step % spe) * hb
    in_epoch, wanted = 0, spe - start_step % spe  # batches of this epoch: read, to read
    while True:
      epoch, k = divmod(step, spe)
      try:
        batch = next(batches)
      except tf.errors.OpError as err:
        self._name_culprit(err, self._epoch_order(self._epoch_seed(epoch)), k * hb, hb)
      if batch["index"][0] < 0:  # the end of an epoch
        if in_epoch < wanted:  # even a second pass of its images could not fill it
          raise ValueError(
              f"epoch {epoch} of the training data yielded {in_epoch} of its {wanted} batches: "
              "more than half of its images could not be read (data.bad_images='skip'); have "
              "the files gone?")
        in_epoch, wanted = 0, spe
        continue
      in_epoch += 1
      if k == 0:
        expected = 0
      # Positions in the epoch's order run on without gaps unless images were skipped.
      self._count_skipped(batch["index"][-1] + 1 - expected - hb)
      expected = batch["index"][-1] + 1
      yield sharding.to_global({k: batch[k] for k in ("image", "small", "label") if k in batch},
                               self._mesh)
      step += 1

  def eval_batches(self, batch_size: int | None = None,
                   max_examples: int | None = None) -> Iterator[dict[str, jax.Array]]:
    hb = sharding.host_batch_size(batch_size or self.global_batch, self._mesh)
    limits = _host_limits(self._host_counts, max_examples)
    own, num_batches = limits[jax.process_index()], -(-max(limits) // hb)
    records = self._records
    if max_examples is not None and max_examples < self.num_examples:
      # A fixed sample, not the first records: folders list their files class by class.
      records = self._epoch_order(self._sample_seed)
    ds = records.take(own).map(self._eval_example, num_parallel_calls=tf.data.AUTOTUNE)
    if self._skip_bad:
      ds = ds.ignore_errors()
    size = self._config.image_size
    pad = tf.data.Dataset.from_tensors({"image": tf.zeros([size, size, 3], tf.uint8),
                                        "label": tf.constant(0, tf.int32),
                                        "mask": tf.constant(0.0)}).repeat()
    batches = self._finish(ds.concatenate(pad).batch(hb).take(num_batches))
    batches = batches.as_numpy_iterator()
    real = 0
    for b in range(num_batches):
      try:
        batch = next(batches)
      except tf.errors.OpError as err:
        self._name_culprit(err, records, b * hb, hb)
      real += int(batch["mask"].sum())
      yield sharding.to_global(batch, self._mesh)
    self._count_skipped(own - real)
