"""Data sources: TFDS and image folders through tf.data, or in-memory arrays on device.

`make_source` is the one entry point; every source yields global batches
`dict(image=uint8 [B,H,W,C], label=int32 [B])` sharded over the `data` mesh axis.
TensorFlow is imported only when a tf.data source is built, never by the arrays path.
"""

from __future__ import annotations

import jax

from supcon_jax import sharding
from supcon_jax.checks import one_of
from supcon_jax.data import labelled
from supcon_jax.data.arrays import (
  DIGITS_EVAL_PER_CLASS,
  ArraySource,
  load_digits,
  make_arrays_source,
)
from supcon_jax.data.base import Crops, Source, crops_on_host
from supcon_jax.data.folder import (
  BAD_IMAGES,
  FileList,
  list_images,
  make_folder_source,
  split_files,
  write_split,
)
from supcon_jax.data.tfds import make_tfds_source

__all__ = ["ArraySource", "BAD_IMAGES", "Crops", "DIGITS_EVAL_PER_CLASS", "FileList", "SOURCES",
           "Source", "crops_on_host", "labelled", "list_images", "load_digits", "make_source",
           "split_files", "write_split"]

_MAKERS = {"arrays": make_arrays_source, "tfds": make_tfds_source, "folder": make_folder_source}
SOURCES = tuple(_MAKERS)  # data.source


def make_source(data_config, *, split: str, global_batch: int, mesh: jax.sharding.Mesh,
                seed: int, crops: Crops = Crops(), labelled_only: bool = False) -> Source:
  """The "train" or "eval" split of the dataset `data_config` describes.

  `crops`: the training crops drawn on the host where `crops_on_host(data_config)`.
  `labelled_only`: the training split only for the examples data.label_fraction or
  data.label_list keeps (labelled.py; the source's `labelled` says which); the evaluation
  split is always whole.
  """
  if split not in ("train", "eval"):
    raise ValueError(f"split={split!r}; expected 'train' or 'eval'")
  sharding.check_batch_size(global_batch, mesh)
  one_of("data.source", data_config.source, SOURCES)
  return _MAKERS[data_config.source](
      data_config, split=split, global_batch=global_batch, mesh=mesh, seed=seed, crops=crops,
      labelled_only=labelled_only and split == "train" and labelled.in_force(data_config))
