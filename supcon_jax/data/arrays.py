"""In-memory datasets held whole on every device; batches are gathered there.

No host input pipeline at all: the dataset is replicated on every device and each step is a
jitted gather `images[perm[k*B:(k+1)*B]]` whose output is sharded over `data`. Epoch e's
permutation is drawn from the run's "data" stream at e (rngs.py), so any step's batch is a
pure function of (seed, step) and a resumed run continues the same stream. Never imports
TensorFlow.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from supcon_jax import rngs, sharding
from supcon_jax.data import labelled
from supcon_jax.data.base import (
  Crops,
  Source,
  check_labels,
  check_num_classes,
  noisy_labels,
  stratified_holdout,
)

DIGITS_EVAL_PER_CLASS = 36  # digits: ~20% of its ~180 images per class held out for eval


def _permutation(epoch, *, seed, n):
  return jax.random.permutation(rngs.draw(rngs.stream(seed, "data"), epoch), n)


def _sample(*, seed, n):
  return jax.random.permutation(rngs.stream(seed, "eval_sample"), n)


def _train_batch(images, labels, perm, start, *, size):
  idx = jax.lax.dynamic_slice_in_dim(perm, start, size)
  return {"image": images[idx], "label": labels[idx]}


def _eval_batch(images, labels, order, start, limit, *, size):
  idx = start + jnp.arange(size)
  real = idx < limit
  idx = order[jnp.where(real, idx, 0)]
  return {"image": images[idx], "label": jnp.where(real, labels[idx], 0),
          "mask": real.astype(jnp.float32)}


class ArraySource(Source):
  """uint8 images [N,H,W,C] and int32 labels [N] resident on the devices of `mesh`."""

  def __init__(self, images: np.ndarray, labels: np.ndarray, *, num_classes: int,
               global_batch: int, mesh: jax.sharding.Mesh, seed: int, skipped: int = 0):
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4:
      raise ValueError(f"images must be uint8 [N,H,W,C], got {images.dtype} {images.shape}")
    labels = check_labels(labels, num_classes)
    if len(labels) != len(images):
      raise ValueError(f"{len(images)} images but {len(labels)} labels")
    sharding.check_batch_size(global_batch, mesh)
    self.num_examples, self.num_classes = len(images), num_classes
    self.image_shape = tuple(images.shape[1:])
    self.global_batch, self.skipped = global_batch, skipped
    self._mesh = mesh
    self._images, self._labels = sharding.replicate((images, labels), mesh)
    self._permute = jax.jit(functools.partial(_permutation, seed=seed, n=self.num_examples),
                            out_shardings=sharding.replicated(mesh))
    self._sample = jax.jit(functools.partial(_sample, seed=seed, n=self.num_examples),
                           out_shardings=sharding.replicated(mesh))
    self._compiled = {}

  @classmethod
  def from_arrays(cls, images: np.ndarray, labels: np.ndarray, *, num_classes: int,
                  global_batch: int, mesh: jax.sharding.Mesh, seed: int = 0) -> ArraySource:
    """A source over your own NumPy arrays (uint8 [N,H,W,C] images, int labels [N])."""
    return cls(images, labels, num_classes=num_classes, global_batch=global_batch,
               mesh=mesh, seed=seed)

  def _jit(self, fn, size: int):
    if (fn, size) not in self._compiled:  # so each new pass reuses the compiled gather
      self._compiled[fn, size] = jax.jit(functools.partial(fn, size=size),
                                         out_shardings=sharding.batch_sharding(self._mesh))
    return self._compiled[fn, size]

  def train_batches(self, start_step: int = 0) -> Iterator[dict[str, jax.Array]]:
    spe = self._check_steps()
    gather = self._jit(_train_batch, self.global_batch)
    step, epoch, perm = start_step, None, None
    while True:
      if step // spe != epoch:
        epoch = step // spe
        perm = self._permute(epoch)
      yield gather(self._images, self._labels, perm, (step % spe) * self.global_batch)
      step += 1

  def eval_batches(self, batch_size: int | None = None,
                   max_examples: int | None = None) -> Iterator[dict[str, jax.Array]]:
    batch_size = batch_size or self.global_batch
    sharding.check_batch_size(batch_size, self._mesh)
    limit = self.num_examples if max_examples is None else min(max_examples, self.num_examples)
    # All examples in order, or a fixed sample of `limit` (the data may be sorted by class).
    order = (self._sample() if limit < self.num_examples
             else jnp.arange(self.num_examples))
    gather = self._jit(_eval_batch, batch_size)
    for start in range(0, limit, batch_size):
      yield gather(self._images, self._labels, order, start, limit)


def load_digits(image_size: int, *, split: str, per_class: int = DIGITS_EVAL_PER_CLASS,
                seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """sklearn's 1797 8x8 digits as uint8 RGB [N, image_size, image_size, 3] and labels.

  "eval" holds out `per_class` images of every class chosen by `seed` (stratified_holdout);
  "train" is the rest.
  """
  from sklearn.datasets import load_digits as sklearn_digits
  digits = sklearn_digits()
  pixels = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)  # values are 0..16
  held = np.zeros(len(pixels), bool)
  held[stratified_holdout(digits.target, per_class, seed, [str(d) for d in range(10)])] = True
  keep = held if split == "eval" else ~held
  resized = np.stack([np.asarray(Image.fromarray(p).resize((image_size, image_size),
                                                          Image.BILINEAR))
                      for p in pixels[keep]])
  return np.repeat(resized[..., None], 3, axis=-1), digits.target[keep]


def make_arrays_source(data_config, *, split: str, global_batch: int,
                       mesh: jax.sharding.Mesh, seed: int, crops: Crops,
                       labelled_only: bool = False) -> ArraySource:
  """The built-in in-memory dataset `data_config.name` (digits), split "train" or "eval";
  `labelled_only`: its labelled examples alone (labelled.py), named by their index."""
  del crops  # the device crops in-memory images
  if data_config.name != "digits":
    raise ValueError(f"data.source='arrays' has one built-in dataset, 'digits'; got "
                     f"data.name={data_config.name!r}. Use ArraySource.from_arrays for your "
                     "own arrays, or data.source='tfds' with data.in_memory=True")
  check_num_classes(10, data_config.num_classes, "digits")
  per_class = data_config.val_per_class or DIGITS_EVAL_PER_CLASS
  images, labels = load_digits(data_config.image_size, split=split, per_class=per_class,
                               seed=data_config.split_seed)
  logging.info("digits %s: %d images of %s", split, len(images), images.shape[1:])
  subset = labelled.choose(data_config, labels=labels, seed=seed,
                           what="digits") if labelled_only else None
  return split_source(images, labels, data_config, subset, split=split, num_classes=10,
                      global_batch=global_batch, mesh=mesh, seed=seed)


def split_source(images: np.ndarray, labels: np.ndarray, data_config,
                 subset: labelled.LabelSubset | None, *, split: str, seed: int,
                 **kwargs: Any) -> ArraySource:
  """The ArraySource of a whole split in memory (kwargs: ArraySource's): its training labels
  noisy (data.label_noise, drawn over the whole split) and, with `subset`, its labelled
  examples alone."""
  labels = noisy_labels(labels, data_config, split=split, seed=seed)
  if subset is not None:
    images, labels = images[subset.indices], labels[subset.indices]
  source = ArraySource(images, labels, seed=seed, **kwargs)
  source.labelled = subset
  return source
