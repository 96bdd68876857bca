"""data.label_noise: a fraction of the training labels replaced by another class, per example.

Oracles: binomial and uniform statistics of the draws; the true class of each example (its
folder, the digits' own labels, TFDS's own records); and agreement of every way one example is
read (epochs, a resumed stream, in memory or streamed), none of which the noise may tell apart.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
from PIL import Image

from supcon_jax.data import make_source
from supcon_jax.data.base import label_noise_offsets
from tests.helpers import data_config as _data


def _within(count, n, p, sigmas=5.0):
  """Whether `count` of `n` Bernoulli(p) draws is within `sigmas` standard deviations."""
  return abs(count - n * p) <= sigmas * math.sqrt(n * p * (1 - p))


def test_a_fraction_p_of_examples_move_to_a_uniformly_drawn_other_class():
  n, p, classes = 40_000, 0.25, 10
  offsets = label_noise_offsets(0, p, classes, n)
  moved = offsets[offsets != 0]
  assert _within(len(moved), n, p)
  assert ((moved >= 1) & (moved < classes)).all()  # (label + k) mod C never is the label
  for k in range(1, classes):  # every other class equally likely
    assert _within(np.count_nonzero(moved == k), len(moved), 1 / (classes - 1))
  # Example i's draw is a function of (seed, i) alone: not of how many examples there are.
  np.testing.assert_array_equal(label_noise_offsets(0, p, classes, 100), offsets[:100])
  assert (label_noise_offsets(1, p, classes, 100) != offsets[:100]).any()
  assert not label_noise_offsets(0, 0.0, classes, 100).any()


def _labels_in_order(source):
  return np.concatenate([np.asarray(b["label"])[np.asarray(b["mask"]) > 0]
                         for b in source.eval_batches()])


def test_digits_training_labels_change_evaluation_labels_never(mesh, caplog):
  def labels(split, noise):
    c = _data(label_noise=noise, image_size=8)
    return _labels_in_order(make_source(c, split=split, global_batch=16, mesh=mesh, seed=0))

  clean = labels("train", 0.0)
  with caplog.at_level(logging.INFO):
    noisy = labels("train", 0.3)
  changed = np.count_nonzero(noisy != clean)
  assert _within(changed, len(clean), 0.3)
  assert f"label noise: {changed} of {len(clean)} training labels" in caplog.text
  np.testing.assert_array_equal(labels("eval", 0.3), labels("eval", 0.0))


def _indexed_folder(root, classes=3, per_class=20):
  """Image j of the folder is painted j everywhere, so a batch names its examples."""
  for c in range(classes):
    (root / f"c{c}").mkdir(parents=True)
    for i in range(per_class):
      j = c * per_class + i
      Image.fromarray(np.full((8, 8, 3), j, np.uint8)).save(root / f"c{c}" / f"{i:02d}.png")
  return root


def _label_of_each_image(batches):
  """{image id: label} over `batches`, failing if one image ever comes with two labels."""
  seen = {}
  for b in batches:
    for image, label in zip(np.asarray(b["image"])[:, 0, 0, 0], np.asarray(b["label"])):
      assert seen.setdefault(int(image), int(label)) == label, f"image {image} relabelled"
  return seen


@pytest.mark.parametrize("in_memory", [False, True])
def test_each_example_keeps_its_noisy_label_across_epochs_resumes_and_sources(
    tmp_path, mesh, in_memory):
  root = _indexed_folder(tmp_path / "train")
  c = _data(source="folder", train_dir=str(root), eval_dir=str(root), num_classes=3,
            image_size=8, label_noise=0.5, in_memory=in_memory, shuffle_buffer=64)
  train = make_source(c, split="train", global_batch=8, mesh=mesh, seed=0)
  assert train.steps_per_epoch == 7
  stream = train.train_batches()
  first = [next(stream) for _ in range(21)]  # three epochs
  resumed = train.train_batches(start_step=10)
  labels = _label_of_each_image(first + [next(resumed) for _ in range(11)])
  assert len(labels) == 60  # every image met, each always under one label
  changed = sum(labels[j] != j // 20 for j in labels)
  assert _within(changed, 60, 0.5, sigmas=4) and changed > 0
  # The same labels where the device gathers them as where tf.data streams them.
  c.in_memory = not in_memory
  other = make_source(c, split="train", global_batch=8, mesh=mesh, seed=0).train_batches()
  other_labels = _label_of_each_image([next(other) for _ in range(21)])
  assert len(other_labels) >= 56
  assert other_labels == {j: labels[j] for j in other_labels}
  # The evaluation split (the same folder here) keeps the folders' classes.
  evaluation = make_source(c, split="eval", global_batch=8, mesh=mesh, seed=0)
  truth = _label_of_each_image(evaluation.eval_batches())
  assert truth == {j: j // 20 for j in range(60)}


def test_tfds_streamed_and_in_memory_give_each_record_the_same_noisy_label(mesh):
  import tensorflow_datasets as tfds

  def by_image(batches):
    return {image.tobytes(): int(label) for b in batches
            for image, label in zip(np.asarray(b["image"]), np.asarray(b["label"]))}

  c = _data(source="tfds", name="cifar10", image_size=32, shuffle_buffer=64, label_noise=0.5)
  with tfds.testing.mock_data(num_examples=40):
    truth = {ex["image"].tobytes(): int(ex["label"])
             for ex in tfds.as_numpy(tfds.load("cifar10", split="train"))}
    streamed = make_source(c, split="train", global_batch=8, mesh=mesh, seed=0).train_batches()
    streamed = by_image(next(streamed) for _ in range(15))  # three epochs
    c.in_memory = True
    memory = make_source(c, split="train", global_batch=8, mesh=mesh, seed=0)
    in_memory = by_image(memory.eval_batches())  # 5 whole batches: no padding
    evaluation = by_image(make_source(c, split="eval", global_batch=8, mesh=mesh,
                                      seed=0).eval_batches())
    truth_eval = {ex["image"].tobytes(): int(ex["label"])
                  for ex in tfds.as_numpy(tfds.load("cifar10", split="test"))}
  assert len(truth) == len(in_memory) == len(streamed) == 40
  assert streamed == in_memory
  changed = sum(in_memory[x] != truth[x] for x in truth)
  assert _within(changed, 40, 0.5, sigmas=4) and changed > 0
  assert evaluation == truth_eval
