"""TFDS image-classification datasets (features "image" and "label") by name.

Each process reads its own even share of the split (`tfds.even_splits`), in a fixed file
order, still encoded; tfdata.TfDataSource shuffles, decodes, crops and batches it.
"""

from __future__ import annotations

import jax

from supcon_jax.data.arrays import ArraySource
from supcon_jax.data.base import Crops, Source, check_num_classes


def make_tfds_source(data_config, *, split: str, global_batch: int,
                     mesh: jax.sharding.Mesh, seed: int, crops: Crops) -> Source:
  """The TFDS dataset `data_config.name`, split "train" or "eval", through tf.data."""
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
  num_classes = features["label"].num_classes
  check_num_classes(num_classes, data_config.num_classes, f"TFDS {data_config.name}")

  def records(tfds_split):
    ds = builder.as_dataset(split=tfds_split, shuffle_files=False,
                            decoders={"image": tfds.decode.SkipDecoding()})
    return ds.map(lambda ex: (ex["image"], tf.cast(ex["label"], tf.int32)))

  if data_config.in_memory:
    images, labels = tfdata.decode_all(records(split_name), data_config.image_size,
                                       data_config.host_resize)
    return ArraySource(images, labels, num_classes=num_classes, global_batch=global_batch,
                       mesh=mesh, seed=seed)

  host_splits = tfds.even_splits(split_name, n=jax.process_count())
  host_counts = [int(records(s).cardinality()) for s in host_splits]
  if min(host_counts) < 0:
    raise ValueError(f"TFDS {data_config.name} split {split_name!r} has no known size")
  image = features["image"]
  height, width = image.shape[:2]  # None where the images' sizes differ
  return tfdata.TfDataSource(
      records(host_splits[jax.process_index()]), host_counts=host_counts,
      num_classes=num_classes, data_config=data_config, global_batch=global_batch, mesh=mesh,
      seed=seed, shuffle_buffer=data_config.shuffle_buffer, crops=crops,
      jpeg={"jpeg": True, "png": False}.get(image.encoding_format),  # None: stored as given
      shorter_side=None if None in (height, width) else min(height, width))
