"""The interface every data source implements, and checks they share.

A source yields global batches `dict(image=uint8 [B,H,W,C], label=int32 [B])` as jax.Arrays
sharded over the `data` mesh axis. Evaluation batches also carry `mask` float32 [B]
(1 for a real example, 0 for padding), so every batch has the same shape and compiles once.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from supcon_jax import rngs

EVAL_CROP = 0.875  # host_resize evaluation: shorter side to image_size / 0.875, central crop


@dataclasses.dataclass(frozen=True)
class Crops:
  """The random-resized crops a streamed source with `data.host_resize` draws on the host:
  `views` independent crops of every training image (batches then hold images [B, V, H, W, C]
  for V > 1), each covering an area fraction in `scale` with aspect ratio in [3/4, 4/3]; and
  multi-crop's `small_views` crops of `small_size` pixels covering `small_scale` (batches then
  also hold "small" [B, small_views, small_size, small_size, C])."""
  views: int = 1
  scale: tuple[float, float] = (0.08, 1.0)
  small_views: int = 0
  small_size: int = 0
  small_scale: tuple[float, float] = (0.05, 0.14)


def crops_on_host(data_config: Any) -> bool:
  """Whether training images are cropped on the host (so the device must not crop again).

  Images of mixed sizes (`host_resize`) are cropped while decoding when they are streamed;
  in device memory they are stored with the evaluation crop and the device crops them.
  """
  return bool(data_config.host_resize and not data_config.in_memory)


class Source:
  """A dataset split served as global, batch-sharded batches."""

  num_examples: int
  num_classes: int
  image_shape: tuple[int, int, int]
  global_batch: int
  skipped: int = 0  # unreadable images skipped so far (folder source, bad_images="skip")
  # The labelled examples a training split was restricted to (make_source's labelled_only
  # under data.label_fraction / data.label_list: a labelled.LabelSubset); None: all of them.
  labelled: Any = None

  @property
  def steps_per_epoch(self) -> int:
    """Full batches per epoch; the remainder is dropped (a different one each epoch)."""
    return self.num_examples // self.global_batch

  def train_batches(self, start_step: int = 0) -> Iterator[dict[str, jax.Array]]:
    """Infinite shuffled stream; batch k is the same whether started at 0 or at k."""
    raise NotImplementedError

  def eval_batches(self, batch_size: int | None = None,
                   max_examples: int | None = None) -> Iterator[dict[str, jax.Array]]:
    """One ordered pass without augmentation; the last batch is padded and masked."""
    raise NotImplementedError

  def _check_steps(self) -> int:
    if self.steps_per_epoch == 0:
      raise ValueError(f"the split has {self.num_examples} examples, fewer than one global "
                       f"batch of {self.global_batch}; lower batch_size")
    return self.steps_per_epoch


def check_num_classes(found: int, configured: int, what: str) -> None:
  """ValueError unless the dataset `what` has the configured number of classes."""
  if found != configured:
    raise ValueError(f"data.num_classes={configured} but {what} has {found} classes")


def check_labels(labels: np.ndarray, num_classes: int) -> np.ndarray:
  """Labels as int32, each in [0, num_classes)."""
  labels = np.asarray(labels)
  if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f"labels must be a 1-D integer array, got {labels.dtype} {labels.shape}")
  bad = labels[(labels < 0) | (labels >= num_classes)]
  if bad.size:
    raise ValueError(f"label {bad[0]} is outside [0, {num_classes}) (num_classes={num_classes})")
  return labels.astype(np.int32)


def stratified_holdout(labels: Sequence[int], per_class: int, seed: int,
                       class_names: Sequence[str]) -> np.ndarray:
  """Sorted indices of `per_class` examples of every class, chosen by `seed`.

  One RandomState(seed) permutes each class's members in turn (classes in index order,
  members in their given order), so the choice depends only on the listing and the seed.
  """
  labels = np.asarray(labels)
  rng = np.random.RandomState(seed)
  held = []
  for c, name in enumerate(class_names):
    members = np.flatnonzero(labels == c)
    if len(members) <= per_class:
      raise ValueError(f"class {name!r} has {len(members)} examples; holding out "
                       f"val_per_class={per_class} would leave none for training")
    held.append(members[rng.permutation(len(members))[:per_class]])
  return np.sort(np.concatenate(held))


def label_noise_offsets(seed: int, fraction: float, num_classes: int, n: int) -> np.ndarray:
  """int32 [n]: 0 keeps training example i's label; k in 1..num_classes-1 replaces it by
  (label + k) mod num_classes, a uniformly drawn other class.

  Example i changes with probability `fraction`, drawn from the "label_noise" stream folded
  with i alone: a pure function of (seed, i), whatever n, the number of hosts, the epoch or
  a resume. i is the example's position in the training split's fixed order (a folder's
  listing before unreadable files are skipped, a TFDS split's record order).
  """
  stream = rngs.stream(seed, "label_noise")

  def offset(i):
    flip_key, class_key = jax.random.split(rngs.draw(stream, i))
    flip = jax.random.uniform(flip_key) < fraction
    return jnp.where(flip, jax.random.randint(class_key, (), 1, num_classes), 0)

  return np.asarray(jax.jit(jax.vmap(offset))(jnp.arange(n, dtype=jnp.uint32)), np.int32)


def noisy_offsets(data_config: Any, *, split: str, seed: int, n: int) -> np.ndarray | None:
  """`label_noise_offsets` of a split of n examples under `data_config.label_noise`, logging
  how many labels change; None where nothing changes (evaluation split, or no noise)."""
  if split != "train" or not data_config.label_noise:
    return None
  offsets = label_noise_offsets(seed, data_config.label_noise, data_config.num_classes, n)
  changed = int(np.count_nonzero(offsets))
  logging.info("label noise: %d of %d training labels (%.2f%%) replaced by another class "
               "(data.label_noise=%g)", changed, n, 100 * changed / max(n, 1),
               data_config.label_noise)
  return offsets


def noisy_labels(labels: np.ndarray, data_config: Any, *, split: str, seed: int) -> np.ndarray:
  """`labels` (the split's, in its fixed order) with `data_config.label_noise` applied."""
  labels = np.asarray(labels)
  offsets = noisy_offsets(data_config, split=split, seed=seed, n=len(labels))
  if offsets is None:
    return labels
  return ((labels + offsets) % data_config.num_classes).astype(labels.dtype)
