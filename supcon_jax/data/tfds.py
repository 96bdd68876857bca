"""TFDS image-classification datasets (features "image" and "label") by name.

Each process reads its own even share of the split (`tfds.even_splits`), in a fixed file
order, still encoded; tfdata.TfDataSource shuffles, decodes, crops and batches it. With
data.classes, only the examples of those classes (by label name) pass, relabelled 0, 1, ...
in its order, before anything is decoded.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np

from supcon_jax.data import labelled
from supcon_jax.data.arrays import split_source
from supcon_jax.data.base import Crops, Source, check_num_classes, noisy_offsets


def make_tfds_source(data_config, *, split: str, global_batch: int,
                     mesh: jax.sharding.Mesh, seed: int, crops: Crops,
                     labelled_only: bool = False) -> Source:
  """The TFDS dataset `data_config.name`, split "train" or "eval", through tf.data;
  `labelled_only`: its labelled records alone (labelled.py), named by their `file_name` or
  `id` feature (else their index), chosen by a pass over the split's labels and names."""
  import tensorflow_datasets as tfds

  from supcon_jax.data import tfdata  # starts TensorFlow as tf_setup does, before TFDS can
  tf = tfdata.tf

  split_name = data_config.train_split if split == "train" else data_config.eval_split
  builder = tfds.builder(data_config.name, data_dir=data_config.data_dir)
  builder.download_and_prepare()
  features = builder.info.features
  missing = {"image", "label"} - set(features.keys())
  if missing:
    raise ValueError(f"TFDS dataset {data_config.name!r} lacks feature(s) {sorted(missing)}; "
                     f"it has {sorted(features.keys())}")
  relabel = class_map(features["label"].names, data_config.classes, f"TFDS {data_config.name}")
  num_classes = features["label"].num_classes if relabel is None else len(data_config.classes)
  check_num_classes(num_classes, data_config.num_classes, f"TFDS {data_config.name}")

  def records(tfds_split, name: str | None = None):
    """(encoded image, label) of each record in a fixed order; (..., its feature `name`)."""
    ds = builder.as_dataset(split=tfds_split, shuffle_files=False,
                            decoders={"image": tfds.decode.SkipDecoding()})
    ds = ds.map(lambda ex: (ex["image"], tf.cast(ex["label"], tf.int32),
                            *([ex[name]] if name else [])))
    if relabel is None:
      return ds
    table = tf.constant(relabel)
    return ds.map(lambda image, y, *rest: (image, tf.gather(table, y), *rest)).filter(
        lambda _, y, *rest: y >= 0)

  def count(tfds_split) -> int:
    ds = records(tfds_split)
    if relabel is None:
      return int(ds.cardinality())
    # A filter leaves the size unknown: one pass over the records, none decoded (for
    # ImageNet's training split one read of it, short next to hundreds of epochs).
    ones = ds.map(lambda image, y: tf.ones([], tf.int64))
    return int(ones.reduce(tf.constant(0, tf.int64), lambda n, one: n + one))

  host_splits = tfds.even_splits(split_name, n=jax.process_count())
  subset, host_counts = None, None
  if labelled_only:  # chosen on the dataset's labels, in the records' order
    name = next((f for f in labelled.NAME_FEATURES if f in features), None)
    # Listed share by share (contiguous, in order): the same pass counts each host's records.
    listings = [_listing(records(s, name), bool(name)) for s in host_splits]
    host_counts = [len(labels) for labels, _ in listings]
    subset = labelled.choose(data_config, labels=np.concatenate([y for y, _ in listings]),
                             names=[n for _, names in listings for n in names] if name else None,
                             seed=seed, what=f"TFDS {data_config.name}")

  if data_config.in_memory:
    images, labels = tfdata.decode_all(records(split_name), data_config.image_size,
                                       data_config.host_resize)
    return split_source(images, labels, data_config, subset, split=split,
                        num_classes=num_classes, global_batch=global_batch, mesh=mesh,
                        seed=seed)

  host_counts = host_counts or [count(s) for s in host_splits]
  if min(host_counts) < 0:
    raise ValueError(f"TFDS {data_config.name} split {split_name!r} has no known size")
  own = records(host_splits[jax.process_index()])
  offsets = noisy_offsets(data_config, split=split, seed=seed, n=sum(host_counts))
  if offsets is not None:  # even_splits are contiguous: this host's records start here
    start = sum(host_counts[:jax.process_index()])
    offsets = tf.constant(offsets[start:start + host_counts[jax.process_index()]])
    own = own.enumerate().map(
        lambda i, rec: (rec[0], (rec[1] + tf.gather(offsets, i)) % num_classes))
  if subset is not None:  # after the noise, which is keyed by the position in the whole split
    own, host_counts = _keep(own, host_counts, subset.indices)
  image = features["image"]
  height, width = image.shape[:2]  # None where the images' sizes differ
  source = tfdata.TfDataSource(
      own, host_counts=host_counts,
      num_classes=num_classes, data_config=data_config, global_batch=global_batch, mesh=mesh,
      seed=seed, shuffle_buffer=data_config.shuffle_buffer, crops=crops,
      jpeg={"jpeg": True, "png": False}.get(image.encoding_format),  # None: stored as given
      shorter_side=None if None in (height, width) else min(height, width))
  source.labelled = subset
  return source


def _listing(records, named: bool) -> tuple[np.ndarray, list[str] | None]:
  """(labels, names or None) of `records` (encoded image, label[, name]), none decoded."""
  labels, names = [np.zeros(0, np.int32)], []
  for batch in records.map(lambda image, *rest: rest).batch(1 << 16).as_numpy_iterator():
    labels.append(batch[0])
    if named:
      names += [name.decode("utf-8", "replace") for name in batch[1]]
  return np.concatenate(labels), names if named else None


def _keep(own, host_counts: list[int], indices: np.ndarray):
  """(this host's records at the split positions `indices`, every host's count of them):
  hosts read contiguous shares of the split (tfds.even_splits), in order."""
  from supcon_jax.data import tfdata
  tf = tfdata.tf

  keep = np.zeros(sum(host_counts), bool)
  keep[indices] = True
  bounds = np.cumsum([0, *host_counts])
  p = jax.process_index()
  mine = tf.constant(keep[bounds[p]:bounds[p + 1]])
  own = own.enumerate().filter(lambda i, _: tf.gather(mine, i)).map(lambda _, record: record)
  return own, [int(keep[a:b].sum()) for a, b in zip(bounds[:-1], bounds[1:])]


def class_map(names: Sequence[str], classes: Sequence[str], what: str) -> np.ndarray | None:
  """int32 [len(names)]: the label each class of the dataset `what` (its label `names`) gets
  under data.classes `classes`, -1 for a class left out; None where `classes` is empty (every
  class, labels unchanged)."""
  if not classes:
    return None
  index = {name: i for i, name in enumerate(names)}
  missing = [name for name in classes if name not in index]
  if missing:
    raise ValueError(f"{what} has no class {missing[0]!r} of data.classes ({len(missing)} of "
                     f"its {len(classes)} are missing); its classes are named "
                     f"{', '.join(list(names)[:3])}, ...")
  out = np.full(len(names), -1, np.int32)
  out[[index[name] for name in classes]] = np.arange(len(classes), dtype=np.int32)
  return out
