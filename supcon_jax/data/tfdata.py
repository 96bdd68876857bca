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

import logging
from collections.abc import Callable, Iterator, Sequence

import jax
import numpy as np

from supcon_jax import rngs, sharding, tf_setup
from supcon_jax.data.base import EVAL_CROP, Crops, Source

tf = tf_setup.tensorflow()

ASPECT_RANGE = (3 / 4, 4 / 3)  # Inception-style random-resized crop


def decode(data: tf.Tensor) -> tf.Tensor:
  """An encoded image (JPEG, PNG, ...) as uint8 [H, W, 3]."""
  return tf.io.decode_image(data, channels=3, dtype=tf.uint8, expand_animations=False)


def _to_uint8(image: tf.Tensor, size: int) -> tf.Tensor:
  image = tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)
  image.set_shape([size, size, 3])
  return image


def resize(image: tf.Tensor, size: int) -> tf.Tensor:
  """To size x size (aspect not kept); images already that size pass untouched."""
  same = tf.reduce_all(tf.shape(image)[:2] == size)
  return _to_uint8(tf.cond(same, lambda: tf.cast(image, tf.float32),
                           lambda: tf.image.resize(image, [size, size], antialias=True)), size)


def center_crop(image: tf.Tensor, size: int) -> tf.Tensor:
  """Shorter side to size / EVAL_CROP (aspect kept), then the central size x size."""
  hw = tf.cast(tf.shape(image)[:2], tf.float32)
  new_hw = tf.cast(tf.round(hw * round(size / EVAL_CROP) / tf.reduce_min(hw)), tf.int32)
  image = tf.image.resize(image, new_hw, antialias=True)
  top, left = (new_hw[0] - size) // 2, (new_hw[1] - size) // 2
  return _to_uint8(image[top:top + size, left:left + size], size)


def _sample_box(shape: tf.Tensor, seed: tf.Tensor, scale: Sequence[float]):
  begin, extent, _ = tf.image.stateless_sample_distorted_bounding_box(
      shape, tf.constant([[[0.0, 0.0, 1.0, 1.0]]]), seed=seed, min_object_covered=0.0,
      aspect_ratio_range=ASPECT_RANGE, area_range=tuple(scale), max_attempts=10,
      use_image_if_no_bounding_boxes=True)
  return begin[:2], extent[:2]


def random_crops(encoded: tf.Tensor, seeds: tf.Tensor, size: int, scale: Sequence[float],
                 jpeg: bool) -> tf.Tensor:
  """One random-resized crop (area fraction in `scale`) per row of `seeds`: [V, size, size, 3].

  The image is decoded once for all crops; a JPEG only within the box that holds them all.
  Bilinear resizing without antialiasing, as SimCLR's and big_vision's Inception crops: most
  crops are enlarged, and antialiasing the others would cost half the host's throughput.
  """
  image = None if jpeg else decode(encoded)
  shape = tf.image.extract_jpeg_shape(encoded) if jpeg else tf.shape(image)
  boxes = [_sample_box(shape, seeds[v], scale) for v in range(seeds.shape[0])]
  top_left = tf.reduce_min(tf.stack([b for b, _ in boxes]), axis=0)
  if jpeg:
    bottom_right = tf.reduce_max(tf.stack([b + e for b, e in boxes]), axis=0)
    window = tf.concat([top_left, bottom_right - top_left], axis=0)
    image = tf.image.decode_and_crop_jpeg(encoded, window, channels=3)
  else:
    top_left = tf.zeros_like(top_left)
  crops = [tf.slice(image, tf.concat([b - top_left, [0]], 0), tf.concat([e, [3]], 0))
           for b, e in boxes]
  return tf.stack([_to_uint8(tf.image.resize(c, [size, size]), size)
                   for c in crops])


def eval_image(encoded: tf.Tensor, size: int, host_resize: bool) -> tf.Tensor:
  """The evaluation transform: centre crop (host_resize) or a plain resize to size x size."""
  image = decode(encoded)
  return center_crop(image, size) if host_resize else resize(image, size)


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
               load: Callable[[tf.Tensor], tf.Tensor] | None = None, jpeg: bool = False,
               skip_bad: bool = False, name_of: Callable[[bytes], str] | None = None,
               orientation: Callable[[tf.Tensor], tf.Tensor] | None = None, skipped: int = 0):
    """records: this host's (key, label int32) in a fixed order; `load(key)` gives the
    encoded image (key is the encoded image when load is None, a path for folders).
    host_counts: records of every process. shuffle_buffer: records in the shuffle buffer
    (all of them where records are sorted by class, e.g. file paths). crops: the training
    crops drawn here when data_config.host_resize. name_of: key -> file name; given, a
    decode failure is traced back to its file and raised as a ValueError naming it.
    orientation: key -> EXIF orientation code, applied after decoding. skipped: records
    left out as unreadable before this source was made."""
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
    self._jpeg, self._skip_bad, self._name_of = jpeg, skip_bad, name_of
    self._shuffle_buffer, self._crops, self._orientation = shuffle_buffer, crops, orientation

  def _epoch_seed(self, epoch):
    return self._seed + epoch

  def _epoch_order(self, epoch_seed) -> tf.data.Dataset:
    return self._records.shuffle(self._shuffle_buffer, seed=epoch_seed,
                                 reshuffle_each_iteration=False)

  def _upright(self, image, key):
    return image if self._orientation is None else orient(image, self._orientation(key))

  def _train_example(self, index, key, label, epoch_seed):
    c, views = self._config, self._crops.views
    if c.host_resize:
      # Crop v of this host's example `index` has its own stateless seed (one view: as before).
      example = index * jax.process_count() + jax.process_index()
      seeds = tf.stack([tf.fill([views], epoch_seed),
                        example * views + tf.range(views, dtype=tf.int64)], axis=1)
      image = random_crops(self._load(key), seeds, c.image_size, self._crops.scale, self._jpeg)
      image = image if views > 1 else image[0]
    else:
      image = resize(decode(self._load(key)), c.image_size)
    return {"image": self._upright(image, key), "label": label, "index": index}

  def _eval_example(self, key, label):
    image = eval_image(self._load(key), self._config.image_size, self._config.host_resize)
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
      yield sharding.to_global({"image": batch["image"], "label": batch["label"]}, self._mesh)
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
