"""data.label_fraction / data.label_list: the labelled examples of the linear (and fine-tuning)
stage.

Oracles: the rule written out here from its definition (per class, f x n rounded half up and
at least one), the classes the test paints into its own folders, sklearn's digits and TFDS's
own records of its mock data; and agreement of every way one subset is read (streamed, in
memory, a resumed stage).
"""

from __future__ import annotations

import json
import logging
import math
import re
import shutil

import numpy as np
import pytest
from PIL import Image

from supcon_jax import experiment, linear_probe, results, rngs, sharding
from supcon_jax.config import base_config
from supcon_jax.data import labelled, load_digits, make_source
from tests.helpers import tiny_runs_config


@pytest.fixture(scope="module")
def mesh():
  return sharding.make_mesh()


def _data(**overrides):
  c = base_config().data
  c.update(overrides)
  return c


def _expected(labels, fraction, seed, num_classes):
  """The rule from its definition: class by class, one RandomState permutes the class's
  members (in the split's order) and the first max(1, floor(f n + 1/2)) stay."""
  labels = np.asarray(labels)
  rng = np.random.RandomState(rngs.host_seed(seed, "label_subset"))
  kept = []
  for c in range(num_classes):
    members = [i for i in range(len(labels)) if labels[i] == c]
    k = max(1, math.floor(fraction * len(members) + 0.5))
    kept += [members[j] for j in rng.permutation(len(members))[:k]]
  return sorted(kept)


def _in_order(source, key="label"):
  return np.concatenate([np.asarray(b[key])[np.asarray(b["mask"]) > 0]
                         for b in source.eval_batches()])


# ------------------------------------------------------------------------ the digits

@pytest.mark.parametrize("fraction", [0.1, 0.37, 0.001])
def test_digits_subset_is_class_balanced_and_chosen_by_the_seed(mesh, fraction):
  _, truth = load_digits(8, split="train")
  c = _data(image_size=8, label_fraction=fraction)
  source = make_source(c, split="train", global_batch=8, mesh=mesh, seed=0, labelled_only=True)
  counts = np.bincount(truth, minlength=10)
  want = [max(1, math.floor(fraction * n + 0.5)) for n in counts]
  got = _in_order(source)
  np.testing.assert_array_equal(np.bincount(got, minlength=10), want)
  np.testing.assert_array_equal(source.labelled.indices, _expected(truth, fraction, 0, 10))
  np.testing.assert_array_equal(got, truth[source.labelled.indices])
  assert source.labelled.names == tuple(str(i) for i in source.labelled.indices)
  assert source.num_examples == sum(want)


def test_digits_subset_depends_on_the_seed_not_on_label_noise(mesh, caplog):
  def chosen(seed, **overrides):
    c = _data(image_size=8, label_fraction=0.1, **overrides)
    return make_source(c, split="train", global_batch=8, mesh=mesh, seed=seed,
                       labelled_only=True).labelled.indices

  with caplog.at_level(logging.INFO):
    first = chosen(0)
  assert ("labelled examples: 145 of the 1437 training examples of digits "
          "(data.label_fraction=0.1)") in caplog.text
  np.testing.assert_array_equal(chosen(0), first)
  assert len(chosen(1)) == len(first) and (chosen(1) != first).any()
  np.testing.assert_array_equal(chosen(0, label_noise=0.4), first)


def test_evaluation_and_unlabelled_stages_read_whole_splits(mesh):
  c = _data(image_size=8, label_fraction=0.1)
  evaluation = make_source(c, split="eval", global_batch=8, mesh=mesh, seed=0,
                           labelled_only=True)
  assert evaluation.labelled is None and evaluation.num_examples == 360
  whole = make_source(c, split="train", global_batch=8, mesh=mesh, seed=0)  # pre-training
  assert whole.labelled is None and whole.num_examples == 1437
  c.label_fraction = 1.0  # the default: nothing chosen, the source as before
  every = make_source(c, split="train", global_batch=8, mesh=mesh, seed=0, labelled_only=True)
  assert every.labelled is None and every.num_examples == 1437


# --------------------------------------------------------------------- image folders

SIZES = (7, 10, 13)  # images per class: 0.3 of them rounds to 2, 3 and 4


def _folder(root):
  """Image j (its number over all classes) is painted j, named c<class>_<i>.png."""
  j = 0
  for c, n in enumerate(SIZES):
    (root / f"c{c}").mkdir(parents=True)
    for i in range(n):
      Image.fromarray(np.full((8, 8, 3), j, np.uint8)).save(root / f"c{c}" / f"c{c}_{i:02d}.png")
      j += 1
  return root


def _painted(batches):
  return [int(x) for b in batches for x in np.asarray(b["image"])[:, 0, 0, 0]]


def test_folder_subset_balanced_streamed_and_in_memory_and_list_by_names(tmp_path, mesh):
  root = _folder(tmp_path / "train")
  c = _data(source="folder", train_dir=str(root), eval_dir=str(root), num_classes=3,
            image_size=8, label_fraction=0.3)
  labels = np.repeat(np.arange(3), SIZES)
  want = _expected(labels, 0.3, 0, 3)
  assert np.bincount(labels[want]).tolist() == [2, 3, 4]
  streamed = make_source(c, split="train", global_batch=8, mesh=mesh, seed=0,
                         labelled_only=True)
  assert streamed.num_examples == 9 and streamed.labelled.indices.tolist() == want
  stream = streamed.train_batches()
  seen = _painted(next(stream) for _ in range(6))
  assert set(seen) == set(want)  # every step trains on the subset, all of it over the epochs
  names = [f"c{k}/c{k}_{i:02d}.png" for k, n in enumerate(SIZES) for i in range(n)]
  assert list(streamed.labelled.names) == [names[j] for j in want]
  c.in_memory = True
  memory = make_source(c, split="train", global_batch=8, mesh=mesh, seed=0, labelled_only=True)
  assert _in_order(memory, "image")[:, 0, 0, 0].tolist() == want
  evaluation = make_source(c, split="eval", global_batch=8, mesh=mesh, seed=0,
                           labelled_only=True)
  assert _in_order(evaluation, "image")[:, 0, 0, 0].tolist() == list(range(30))

  # A list: base names (as SimCLR's) or paths under the folder, in any order.
  listed = tmp_path / "ten.txt"
  listed.write_text("c2_12.png\n\nc0/c0_03.png\r\nc1_00.png\n")
  c.update(label_fraction=1.0, label_list=str(listed), in_memory=False)
  chosen = make_source(c, split="train", global_batch=8, mesh=mesh, seed=0, labelled_only=True)
  assert chosen.labelled.indices.tolist() == [3, 7, 29]
  assert chosen.labelled.names == ("c0/c0_03.png", "c1/c1_00.png", "c2/c2_12.png")
  assert _in_order(chosen, "image")[:, 0, 0, 0].tolist() == [3, 7, 29]
  listed.write_text("c0_03.png\nn01440764_10026.JPEG\nc9_00.png\n")
  with pytest.raises(ValueError, match=re.escape(
      "label_list='" + str(listed) + "': 2 of its 3 names are not in the training split of "
      "image folder " + str(root) + ": 'n01440764_10026.JPEG', 'c9_00.png'")):
    make_source(c, split="train", global_batch=8, mesh=mesh, seed=0, labelled_only=True)


# ------------------------------------------------------------------------------ TFDS

def test_tfds_subset_streamed_in_memory_and_listed_by_id(tmp_path, mesh):
  """cifar10's mock records have an `id` feature (imagenet2012's a `file_name`): the
  subset's names. Label noise is drawn for the whole split first, so a record keeps its noisy
  label whether or not a subset is taken, streamed or in memory."""
  import tensorflow_datasets as tfds

  def by_image(batches):
    """{image: label} of the real examples of `batches`."""
    out = {}
    for b in batches:
      real = np.asarray(b.get("mask", np.ones(len(b["label"])))) > 0
      out.update((x.tobytes(), int(y)) for x, y in zip(np.asarray(b["image"])[real],
                                                       np.asarray(b["label"])[real]))
    return out

  c = _data(source="tfds", name="cifar10", image_size=32, shuffle_buffer=64, label_noise=0.5,
            label_fraction=0.5)
  with tfds.testing.mock_data(num_examples=40):
    records = list(tfds.as_numpy(tfds.load("cifar10", split="train")))
    truth = np.array([int(ex["label"]) for ex in records])
    ids = [ex["id"].decode().strip() for ex in records]
    streamed = make_source(c, split="train", global_batch=8, mesh=mesh, seed=0,
                           labelled_only=True)
    stream = streamed.train_batches()
    streamed_labels = by_image(next(stream) for _ in range(3 * streamed.steps_per_epoch))
    c.in_memory = True
    memory = make_source(c, split="train", global_batch=8, mesh=mesh, seed=0,
                         labelled_only=True)
    noisy_whole = by_image(make_source(c, split="train", global_batch=8, mesh=mesh,
                                       seed=0).eval_batches())
    in_memory = by_image(memory.eval_batches())
    c.in_memory = False
    evaluation = make_source(c, split="eval", global_batch=8, mesh=mesh, seed=0,
                             labelled_only=True)
    assert evaluation.labelled is None and evaluation.num_examples == 40

    want = _expected(truth, 0.5, 0, 10)
    assert streamed.labelled.indices.tolist() == memory.labelled.indices.tolist() == want
    assert list(streamed.labelled.names) == [ids[i] for i in want]
    subset_images = {records[i]["image"].tobytes() for i in want}
    assert set(streamed_labels) == subset_images  # three epochs: all of it, nothing else
    assert streamed_labels == in_memory == {x: noisy_whole[x] for x in subset_images}

    # The workdir's record is a list data.label_list takes back.
    listed = tmp_path / "ids.txt"
    listed.write_text(streamed.labelled.text())
    c.update(label_fraction=1.0, label_list=str(listed), label_noise=0.0)
    again = make_source(c, split="train", global_batch=8, mesh=mesh, seed=0, labelled_only=True)
    assert again.labelled.indices.tolist() == want and again.num_examples == len(want)
    listed.write_text(f"{ids[3]}\nno such record\n")
    with pytest.raises(ValueError, match="1 of its 2 names are not in the training split of "
                                         "TFDS cifar10: 'no such record'"):
      make_source(c, split="train", global_batch=8, mesh=mesh, seed=0, labelled_only=True)


def test_tfds_subset_of_some_classes_reads_the_split_once_before_training(mesh, monkeypatch):
  """With data.classes the split's size is unknown until it is read: the pass that lists the
  labels for the subset also counts the hosts' shares, so ImageNet-100 at 1% of its labels
  reads ImageNet's records once before training, not twice. The subset is the rule's, taken
  among the kept classes relabelled in data.classes' order."""
  import tensorflow_datasets as tfds

  with tfds.testing.mock_data(num_examples=60):
    records = list(tfds.as_numpy(tfds.load("cifar10", split="train")))
    all_names = tfds.builder("cifar10").info.features["label"].names
    names = (all_names[3], all_names[0], all_names[8])  # out of the label order
    c = _data(source="tfds", name="cifar10", image_size=32, shuffle_buffer=64,
              classes=names, num_classes=3, label_fraction=0.5)
    kept = [i for i, ex in enumerate(records) if all_names[ex["label"]] in names]
    relabelled = [names.index(all_names[records[i]["label"]]) for i in kept]
    reads = []
    as_dataset = tfds.core.DatasetBuilder.as_dataset
    monkeypatch.setattr(tfds.core.DatasetBuilder, "as_dataset",
                        lambda self, *a, **k: reads.append(k.get("split")) or
                        as_dataset(self, *a, **k))
    source = make_source(c, split="train", global_batch=8, mesh=mesh, seed=0,
                         labelled_only=True)
    assert len(reads) == 2, reads  # the listing, then the stream the source trains on
    want = _expected(relabelled, 0.5, 0, 3)
    assert source.labelled.indices.tolist() == want
    stream = source.train_batches()
    seen = {}
    for _ in range(4 * source.steps_per_epoch):  # four epochs: all of it, nothing else
      b = next(stream)
      seen.update((x.tobytes(), int(y)) for x, y in zip(np.asarray(b["image"]),
                                                         np.asarray(b["label"])))
    assert seen == {records[kept[i]]["image"].tobytes(): relabelled[i] for i in want}


# ---------------------------------------------------------------------- the config

@pytest.mark.parametrize("fields,message", [
    ({"label_fraction": 0.0}, "config.data.label_fraction=0.0 must be a fraction of the "
                              "training labels in (0, 1]"),
    ({"label_fraction": 1.5}, "config.data.label_fraction=1.5 must be"),
    ({"label_fraction": 0.1, "label_list": "LIST"}, "config.data.label_list='LIST' and "
     "config.data.label_fraction=0.1 both choose the labelled examples; set one of them"),
    ({"label_list": "MISSING"}, "config.data.label_list='MISSING' is not a file"),
])
def test_bad_label_fields_fail_validation_naming_the_field(tmp_path, fields, message):
  (tmp_path / "LIST").write_text("a\n")
  config = base_config()
  for name, value in fields.items():
    config.data[name] = str(tmp_path / value) if name == "label_list" else value
  message = message.replace("LIST", str(tmp_path / "LIST")).replace(
      "MISSING", str(tmp_path / "MISSING"))
  with pytest.raises(ValueError, match=re.escape(message)):
    experiment.validate(config)


# ------------------------------------------------------------------ the linear stage

def test_linear_stage_trains_on_the_subset_records_it_and_resumes_it(tiny_runs, tmp_path,
                                                                     monkeypatch):
  """A 10% linear stage on a copy of the tiny supcon run (its full-label classifier done):
  the classifier sees the subset alone, in a directory of its own; the subset is written to
  the workdir; a rerun resumes it and a changed seed stops naming the file."""
  workdir = tmp_path / "supcon"
  shutil.copytree(tiny_runs[0] / "supcon", workdir)
  seen = []
  train_classifier = linear_probe.train_classifier

  def spy(config, model, train_source, *args, **kwargs):
    seen.append(train_source)
    return train_classifier(config, model, train_source, *args, **kwargs)

  monkeypatch.setattr(linear_probe, "train_classifier", spy)
  config = tiny_runs_config("supcon")
  config.update(stage="linear", embedding_plot=False)
  config.robustness.enabled = False
  config.data.label_fraction = 0.1
  got = experiment.train_and_evaluate(config, str(workdir))

  _, truth = load_digits(8, split="train")
  want = _expected(truth, 0.1, 0, 10)
  (source,) = seen
  assert source.labelled.indices.tolist() == want and source.num_examples == 145
  np.testing.assert_array_equal(_in_order(source), truth[want])
  saved = json.loads((workdir / "results.json").read_text())
  block = saved["labelled"]["fraction0.1"]
  assert block["label_fraction"] == 0.1 and block["labelled_examples"] == 145
  assert block["label_list"] == "" and block["linear_top1"] == got["labelled"]["fraction0.1"][
      "linear_top1"]
  # Stage all's classifier, trained on every label, keeps its figures beside the subset's.
  full = tiny_runs[1]["supcon"]
  assert saved["linear_top1"] == full["linear_top1"] and "label_fraction" not in full
  assert saved["knn_top1"] == full["knn_top1"]  # its bank: every image
  table = results.run_tables({"supcon": saved, "ce": tiny_runs[1]["ce"]})
  assert "| supcon | 10% (145) |" in table and "| labels |" in table
  record = workdir / "label_subset_fraction0.1.txt"
  assert record.read_text().split() == [str(i) for i in want]
  # Its classifier apart from the full-label one (whose two steps stay as they were).
  rows = (workdir / "linear_fraction0.1" / "4" / "metrics.jsonl").read_text().splitlines()
  assert [json.loads(r)["step"] for r in rows] == [1]  # 2/22 of an epoch of 2 steps, at least 1
  assert len((workdir / "linear" / "4" / "metrics.jsonl").read_text().splitlines()) == 2

  again = experiment.train_and_evaluate(config, str(workdir))  # a resume: nothing to train
  assert again["labelled"] == got["labelled"] and seen[1].labelled.indices.tolist() == want
  assert record.read_text().split() == [str(i) for i in want]
  config.seed = 1
  with pytest.raises(ValueError, match=re.escape(f"{record} lists the 145 labelled examples "
                                                 "an earlier run in this workdir trained on")):
    experiment.train_and_evaluate(config, str(workdir))


def test_subset_record_and_directories_are_named_by_the_rule():
  c = _data()
  assert labelled.tag(c) == "" and labelled.stage_dir("W", "linear", c) == "W/linear"
  c.label_fraction = 0.01
  assert labelled.stage_dir("W", "linear", c) == "W/linear_fraction0.01"
  c.update(label_fraction=1.0, label_list="/lists/1percent.txt")
  assert labelled.tag(c) == "list_1percent"
