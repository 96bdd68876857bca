"""ImageNet-100 (configs/imagenet100.py) and data.classes: the published class list, TFDS's
imagenet2012 (mocked) and an image folder cut down to those classes, labelled in its order.

References are independent of the code under test: TFDS's own mock examples and label names,
and the colours the test paints into its own image files.
"""

import hashlib
import os
import re

import jax
import numpy as np
import pytest
from PIL import Image

from supcon_jax import config as config_lib
from supcon_jax import experiment
from supcon_jax.data import make_source

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE = os.path.join(ROOT, "configs", "imagenet100.py")
# sha256 of HobbitLong/CMC's imagenet100.txt: its 100 ids one a line, each ending in "\n".
CMC_SHA256 = "79f3f1552ccc478ce24bd934b4573625db584ddc1f4643ae23c994a94cb11397"


@pytest.fixture(scope="module")
def recipe():
  return config_lib.load_config_file(RECIPE)


def test_the_recipe_has_the_published_class_list_and_validates(recipe):
  classes = recipe.data.classes
  assert len(classes) == len(set(classes)) == recipe.data.num_classes == 100
  assert all(re.fullmatch(r"n\d{8}", wnid) for wnid in classes)
  text = "".join(f"{wnid}\n" for wnid in classes)
  assert hashlib.sha256(text.encode()).hexdigest() == CMC_SHA256
  import tensorflow_datasets as tfds
  names = tfds.builder("imagenet2012").info.features["label"].names  # no data needed
  assert set(classes) <= set(names)
  assert (recipe.data.source, recipe.data.name, recipe.model.depth, recipe.batch_size) == (
      "tfds", "imagenet2012", 18, 256)
  assert recipe.knn.full_bank
  experiment.validate(recipe)


def _data_config(**overrides):
  c = config_lib.base_config().data
  c.update(overrides)
  return c


def _labels_and_images(source):
  batches = [jax.tree.map(np.asarray, b) for b in source.eval_batches()]
  keep = np.concatenate([b["mask"] for b in batches]) > 0
  return (np.concatenate([b["label"] for b in batches])[keep],
          np.concatenate([b["image"] for b in batches])[keep])


@pytest.mark.parametrize("in_memory", [False, True])
def test_tfds_imagenet_keeps_the_100_classes_labelled_in_the_lists_order(recipe, mesh,
                                                                        in_memory):
  import tensorflow_datasets as tfds
  classes = recipe.data.classes
  c = _data_config(source="tfds", name="imagenet2012", eval_split="validation",
                   classes=classes, num_classes=100, image_size=16, host_resize=True,
                   in_memory=in_memory, shuffle_buffer=64)
  with tfds.testing.mock_data(num_examples=600):
    builder = tfds.builder("imagenet2012")
    names = builder.info.features["label"].names
    reference = list(tfds.as_numpy(builder.as_dataset(split="validation", shuffle_files=False)))
    kept = [ex for ex in reference if names[ex["label"]] in classes]
    want = np.array([classes.index(names[ex["label"]]) for ex in kept])
    assert 30 < len(kept) < 120 and len(set(want)) > 20  # the mock spreads over 1,000 classes
    source = make_source(c, split="eval", global_batch=16, mesh=mesh, seed=0)
    assert (source.num_examples, source.num_classes) == (len(kept), 100)
    labels, images = _labels_and_images(source)
    np.testing.assert_array_equal(labels, want)  # the same examples, in order, relabelled
    assert images.shape == (len(kept), 16, 16, 3)
    if not in_memory:
      train = make_source(c, split="train", global_batch=16, mesh=mesh, seed=0)
      batch = jax.tree.map(np.asarray, next(train.train_batches()))
      assert train.num_classes == 100 and 30 < train.num_examples < 120
      assert ((batch["label"] >= 0) & (batch["label"] < 100)).all()


def test_tfds_names_a_class_it_does_not_have(mesh):
  import tensorflow_datasets as tfds
  c = _data_config(source="tfds", name="imagenet2012", eval_split="validation",
                   classes=("n01440764", "n99999999"), num_classes=2)
  with tfds.testing.mock_data(num_examples=4):
    with pytest.raises(ValueError, match="TFDS imagenet2012 has no class 'n99999999'"):
      make_source(c, split="eval", global_batch=8, mesh=mesh, seed=0)


def _paint(path, red):
  Image.fromarray(np.full((12, 10, 3), (red, 90, 160), np.uint8)).save(path)


@pytest.fixture
def imagenet_folder(tmp_path, recipe):
  """train/ and val/ with three of the 100 classes, whose list order is not their sorted
  order, and n01440764 (ImageNet's first class, not one of the 100) holding a file that
  is no image: reading it would fail."""
  chosen = recipe.data.classes[:3]
  assert list(chosen) != sorted(chosen)
  for split, count in (("train", 4), ("val", 2)):
    for i, wnid in enumerate(chosen):
      (tmp_path / split / wnid).mkdir(parents=True)
      for j in range(count):
        _paint(tmp_path / split / wnid / f"{j}.png", red=40 + 80 * i)
    (tmp_path / split / "n01440764").mkdir()
    _paint(tmp_path / split / "n01440764" / "0.png", red=255)
    (tmp_path / split / "n01440764" / "notes.txt").write_text("not an image")
  return tmp_path, chosen


@pytest.mark.parametrize("in_memory", [False, True])
def test_folder_keeps_the_named_classes_labelled_in_the_lists_order(imagenet_folder, mesh,
                                                                   in_memory):
  root, chosen = imagenet_folder
  c = _data_config(source="folder", train_dir=str(root / "train"), eval_dir=str(root / "val"),
                   classes=chosen, num_classes=3, image_size=8, in_memory=in_memory)
  for split, count in (("train", 4), ("eval", 2)):
    source = make_source(c, split=split, global_batch=8, mesh=mesh, seed=0)
    assert (source.num_examples, source.num_classes) == (3 * count, 3)
    labels, images = _labels_and_images(source)
    np.testing.assert_array_equal(labels, np.repeat(np.arange(3), count))
    # Each image's painted red says which of the chosen folders it came from.
    np.testing.assert_array_equal(np.round((images[..., 0].mean(axis=(1, 2)) - 40) / 80),
                                  labels)


def test_folder_names_the_classes_it_lacks(imagenet_folder, mesh):
  root, chosen = imagenet_folder
  c = _data_config(source="folder", train_dir=str(root / "train"), val_per_class=1,
                   classes=(*chosen, "n99999999"), num_classes=4, image_size=8)
  with pytest.raises(ValueError, match="no sub-folder for 1 of the 4 classes of data.classes: "
                                       "n99999999"):
    make_source(c, split="train", global_batch=8, mesh=mesh, seed=0)


@pytest.mark.parametrize("fields,message", [
    ({"data.source": "arrays"}, "config.data.source='arrays' has no class names"),
    ({"data.classes": ("a", "b", "a")}, "config.data.classes names a more than once"),
    ({"data.classes": ("a", "")}, "config.data.classes: '' is not a class name"),
    ({"data.num_classes": 3}, "config.data.classes names 2 classes but "
                              "config.data.num_classes=3"),
])
def test_bad_classes_fail_validation_naming_the_field(fields, message):
  c = config_lib.base_config()
  c.data.update(source="folder", train_dir="/nowhere", classes=("a", "b"), num_classes=2)
  c.update_from_flattened_dict(fields)
  with pytest.raises(ValueError, match=re.escape(message)):
    experiment.validate(c)
