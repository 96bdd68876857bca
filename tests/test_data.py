"""Data sources: in-memory arrays (no TensorFlow), image folders and TFDS through tf.data.

References are independent of the code under test: sklearn's digits, the pixel colours the
test paints into its own image files, and TFDS's own decoding of its mock data.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import sys
import textwrap
import threading

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P
from PIL import Image

from supcon_jax import augment, experiment, methods, sharding
from supcon_jax.config import base_config
from supcon_jax.data import ArraySource, Crops, list_images, make_source, split_files, write_split
from tests.helpers import data_config as _config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _take(iterator, n):
  return [jax.tree.map(np.asarray, next(iterator)) for _ in range(n)]


def _check_batch(batch, size, channels=3, batch_size=16):
  assert batch["image"].shape == (batch_size, size, size, channels)
  assert batch["image"].dtype == np.uint8 and batch["label"].dtype == np.int32
  assert batch["image"].sharding.spec == P("data")
  assert len(batch["image"].addressable_shards) == 8
  assert batch["image"].addressable_shards[0].data.shape[0] == batch_size // 8


# ---------------------------------------------------------------- in-memory arrays

def _indexed(n=100):
  """Image i carries i in pixel (0, 0, 0), so batches can be traced back to examples."""
  images = np.zeros((n, 4, 4, 3), np.uint8)
  images[:, 0, 0, 0] = np.arange(n)
  return images, np.arange(n) % 10


def test_arrays_epochs_are_permutations_deterministic_and_resumable(mesh):
  images, labels = _indexed()
  def source(seed):
    return ArraySource.from_arrays(images, labels, num_classes=10, global_batch=16, mesh=mesh,
                                   seed=seed)

  src = source(3)
  assert src.steps_per_epoch == 6
  stream = _take(src.train_batches(), 14)
  _check_batch(next(src.train_batches()), 4)
  ids = [b["image"][:, 0, 0, 0].astype(int) for b in stream]
  for b, i in zip(stream, ids):
    np.testing.assert_array_equal(b["label"], i % 10)
  epoch0, epoch1 = np.concatenate(ids[:6]), np.concatenate(ids[6:12])
  assert len(set(epoch0)) == 96 and len(set(epoch1)) == 96  # no example twice in an epoch
  assert not np.array_equal(epoch0, epoch1)  # each epoch its own order
  for k in (0, 4, 6, 13):  # within the first epoch, at and past an epoch boundary
    resumed = jax.tree.map(np.asarray, next(src.train_batches(start_step=k)))
    np.testing.assert_array_equal(resumed["image"], stream[k]["image"])
  np.testing.assert_array_equal(_take(source(3).train_batches(), 1)[0]["image"], stream[0]["image"])
  assert not np.array_equal(_take(source(4).train_batches(), 1)[0]["image"], stream[0]["image"])


def test_arrays_eval_pass_is_ordered_and_masked(mesh):
  images, labels = _indexed()
  src = ArraySource.from_arrays(images, labels, num_classes=10, global_batch=16, mesh=mesh)
  batches = [jax.tree.map(np.asarray, b) for b in src.eval_batches(batch_size=32)]
  assert len(batches) == 4 and batches[0]["mask"].dtype == np.float32
  mask = np.concatenate([b["mask"] for b in batches])
  np.testing.assert_array_equal(mask, np.arange(128) < 100)
  ids = np.concatenate([b["image"][:, 0, 0, 0] for b in batches])[:100]
  np.testing.assert_array_equal(ids, np.arange(100))
  np.testing.assert_array_equal(np.concatenate([b["label"] for b in batches])[:100], labels)
  short = list(src.eval_batches(max_examples=20))
  assert len(short) == 2 and sum(float(b["mask"].sum()) for b in short) == 20
  with pytest.raises(ValueError, match="divisible"):
    next(src.eval_batches(batch_size=12))


def test_arrays_bad_input(mesh):
  images, labels = _indexed(20)
  kwargs = dict(num_classes=10, global_batch=16, mesh=mesh)
  with pytest.raises(ValueError, match="label 10 "):
    ArraySource.from_arrays(images, np.where(labels == 3, 10, labels), **kwargs)
  with pytest.raises(ValueError, match="label -1 "):
    ArraySource.from_arrays(images, labels - 1, **kwargs)
  with pytest.raises(ValueError, match="uint8"):
    ArraySource.from_arrays(images.astype(np.float32), labels, **kwargs)
  with pytest.raises(ValueError, match="uint8"):
    ArraySource.from_arrays(images[..., 0], labels, **kwargs)
  with pytest.raises(ValueError, match="divisible"):
    ArraySource.from_arrays(images, labels, num_classes=10, global_batch=12, mesh=mesh)
  with pytest.raises(ValueError, match="divisible"):
    make_source(_config(), split="train", global_batch=20, mesh=mesh, seed=0)
  with pytest.raises(ValueError, match="num_classes=7"):
    make_source(_config(num_classes=7), split="train", global_batch=16, mesh=mesh, seed=0)
  with pytest.raises(ValueError, match="fewer than one global batch"):
    next(ArraySource.from_arrays(images[:8], labels[:8], **kwargs).train_batches())


def test_digits_split_is_stratified_partition_of_sklearn_digits(mesh):
  from sklearn.datasets import load_digits  # the independent reference
  digits = load_digits()
  expected = np.round(digits.images * 255 / 16).astype(np.uint8)
  c = _config(image_size=8)
  train = make_source(c, split="train", global_batch=16, mesh=mesh, seed=0)
  held = make_source(c, split="eval", global_batch=16, mesh=mesh, seed=0)
  assert (train.num_examples, held.num_examples) == (1797 - 360, 360)

  def everything(src):
    batches = [jax.tree.map(np.asarray, b) for b in src.eval_batches()]
    real = np.concatenate([b["mask"] for b in batches]) == 1
    return (np.concatenate([b["image"] for b in batches])[real],
            np.concatenate([b["label"] for b in batches])[real])

  (ti, tl), (ei, el) = everything(train), everything(held)
  np.testing.assert_array_equal(np.bincount(el, minlength=10), np.full(10, 36))
  assert (ti[..., 0] == ti[..., 2]).all()  # grey replicated to 3 channels
  # Together the two splits are exactly sklearn's images with their labels (a partition).
  grey = np.concatenate([ti, ei])[..., 0]
  ours = sorted(zip(np.concatenate([tl, el]), [x.tobytes() for x in grey]))
  ref = sorted(zip(digits.target, [x.tobytes() for x in expected]))
  assert ours == ref
  again = everything(make_source(c, split="eval", global_batch=16, mesh=mesh, seed=5))
  np.testing.assert_array_equal(again[0], ei)  # the split ignores the training seed
  other = everything(make_source(_config(image_size=8, split_seed=1), split="eval",
                                 global_batch=16, mesh=mesh, seed=0))
  assert not np.array_equal(other[0], ei)
  big = make_source(_config(image_size=16), split="train", global_batch=16, mesh=mesh, seed=0)
  _check_batch(next(big.train_batches()), 16)


NO_TF = textwrap.dedent("""
  import sys
  import numpy as np

  class BlockTensorFlow:
    def find_spec(self, name, path=None, target=None):
      if name.split(".")[0] in ("tensorflow", "tensorflow_datasets"):
        raise ImportError("tensorflow is blocked in this test")

  sys.meta_path.insert(0, BlockTensorFlow())
  import jax
  from supcon_jax import sharding
  from supcon_jax.config import base_config
  from supcon_jax.data import make_source

  src = make_source(base_config().data, split="train", global_batch=16,
                    mesh=sharding.make_mesh(), seed=0)
  batch = next(src.train_batches(start_step=3))
  assert batch["image"].shape == (16, 32, 32, 3), batch["image"].shape
  assert len(batch["image"].addressable_shards) == 8
  assert not any(m.startswith("tensorflow") for m in sys.modules)
  print("OK", src.num_examples)
""")


def test_arrays_path_runs_where_tensorflow_cannot_be_imported():
  out = subprocess.run([sys.executable, "-c", NO_TF], cwd=ROOT, capture_output=True, text=True,
                       timeout=120, env={**os.environ, "PYTHONPATH": ROOT}, check=False)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "OK 1437" in out.stdout


# ---------------------------------------------------------------- image folders

CLASSES = ("ant", "bee", "cat")


def _paint(path, cls, shape=(10, 12), seed=0):
  """Red = 40 + 80 * class everywhere (survives resizes, crops and JPEG); green/blue ramps
  that differ per image, smooth so that JPEG's chroma subsampling barely touches red."""
  y, x = np.mgrid[:shape[0], :shape[1]]
  pixels = np.stack([np.full(shape, 40 + 80 * cls), (x * 9 + seed * 7) % 256,
                     (y * 11 + seed * 13) % 256], axis=-1)
  Image.fromarray(pixels.astype(np.uint8)).save(path)


def _class_of(images):
  red = images[..., 0].astype(int)
  assert (red.max(axis=(1, 2)) - red.min(axis=(1, 2)) <= 30).all()
  return np.round((red.mean(axis=(1, 2)) - 40) / 80).astype(int)


@pytest.fixture
def folder(tmp_path):
  root = tmp_path / "train"
  for c, name in enumerate(CLASSES):
    (root / name / "nested").mkdir(parents=True)
    for i in range(5):
      ext = ("png", "JPG", "jpeg", "bmp", "png")[i]
      where = root / name / "nested" if i == 4 else root / name
      _paint(where / f"img{i}.{ext}", c, shape=(10 + i, 12), seed=10 * c + i)
    (root / name / ".DS_Store").write_bytes(b"junk")
  (root / "README.txt").write_text("plain files in the root are ignored")
  return root


def test_list_images_maps_sorted_class_folders(folder):
  files = list_images(str(folder))
  assert files.classes == CLASSES and len(files) == 15
  for path, label in zip(files.paths, files.labels):
    assert os.path.relpath(path, folder).split(os.sep)[0] == CLASSES[label]
    assert _class_of(np.asarray(Image.open(path).convert("RGB"))[None]) == label
  assert any("nested" in p for p in files.paths)


def test_held_out_split_is_deterministic_disjoint_and_per_class(folder, tmp_path):
  files = list_images(str(folder))
  train, held = split_files(files, 2, seed=0)
  assert np.bincount(held.labels).tolist() == [2, 2, 2]
  assert np.bincount(train.labels).tolist() == [3, 3, 3]
  assert not set(train.paths) & set(held.paths)
  assert sorted(train.paths + held.paths) == sorted(files.paths)
  assert split_files(list_images(str(folder)), 2, seed=0) == (train, held)
  assert split_files(files, 2, seed=1)[1] != held
  write_split(str(tmp_path / "held.txt"), held)
  lines = (tmp_path / "held.txt").read_text().splitlines()
  assert lines == [os.path.relpath(p, folder) for p in held.paths]
  with pytest.raises(ValueError, match="'ant' has 5 examples"):
    split_files(files, 5, seed=0)


@pytest.mark.parametrize("in_memory", [False, True])
def test_folder_source_batches_and_eval_split(folder, mesh, in_memory):
  c = _config(source="folder", train_dir=str(folder), val_per_class=2, num_classes=3,
              image_size=8, in_memory=in_memory)
  src = make_source(c, split="train", global_batch=8, mesh=mesh, seed=0)
  assert (src.num_examples, src.num_classes, src.image_shape) == (9, 3, (8, 8, 3))
  stream = _take(src.train_batches(), 3)
  _check_batch(next(src.train_batches()), 8, batch_size=8)
  for b in stream:
    np.testing.assert_array_equal(_class_of(b["image"]), b["label"])
  np.testing.assert_array_equal(next(src.train_batches(start_step=2))["image"], stream[2]["image"])
  held = make_source(c, split="eval", global_batch=8, mesh=mesh, seed=0)
  batches = [jax.tree.map(np.asarray, b) for b in held.eval_batches()]
  assert held.num_examples == 6 and len(batches) == 1
  np.testing.assert_array_equal(batches[0]["mask"], [1, 1, 1, 1, 1, 1, 0, 0])
  np.testing.assert_array_equal(_class_of(batches[0]["image"][:6]), batches[0]["label"][:6])
  np.testing.assert_array_equal(batches[0]["label"][:6], [0, 0, 1, 1, 2, 2])


def test_folder_host_crops_are_deterministic(folder, mesh):
  c = _config(source="folder", train_dir=str(folder), num_classes=3, image_size=6,
              host_resize=True)
  src = make_source(c, split="train", global_batch=8, mesh=mesh, seed=1,
                    crops=Crops(1, (0.2, 0.5)))
  stream = _take(src.train_batches(), 5)  # 15 images: one epoch is a single batch
  for b in stream:
    np.testing.assert_array_equal(_class_of(b["image"]), b["label"])
  assert not np.array_equal(stream[3]["image"], stream[4]["image"])
  np.testing.assert_array_equal(next(src.train_batches(start_step=4))["image"], stream[4]["image"])
  eval_images = [np.asarray(b["image"]) for b in src.eval_batches()]
  assert eval_images[0].shape == (8, 6, 6, 3) and len(eval_images) == 2


def test_folder_bad_layouts_name_the_culprit(folder, tmp_path, mesh):
  def source(**overrides):
    c = _config(source="folder", train_dir=str(folder), num_classes=3, image_size=8)
    c.update(overrides)
    return make_source(c, split="train", global_batch=8, mesh=mesh, seed=0)

  with pytest.raises(ValueError, match="nowhere"):
    source(train_dir=str(tmp_path / "nowhere"))
  (tmp_path / "empty_root").mkdir()
  (tmp_path / "empty_root" / "x.png").write_bytes(b"")
  with pytest.raises(ValueError, match="no class sub-folders"):
    source(train_dir=str(tmp_path / "empty_root"))
  with pytest.raises(ValueError, match="num_classes=4"):
    source(num_classes=4)
  (folder / "dog").mkdir()
  with pytest.raises(ValueError, match="dog"):
    list_images(str(folder))
  (folder / "dog").rmdir()
  (folder / "bee" / "notes.txt").write_text("not an image")
  with pytest.raises(ValueError, match="notes.txt"):
    list_images(str(folder))
  (folder / "bee" / "notes.txt").unlink()

  eval_root = tmp_path / "eval"
  for name in ("ant", "bee", "cow"):
    (eval_root / name).mkdir(parents=True)
    _paint(eval_root / name / "a.png", 0)
  c = _config(source="folder", train_dir=str(folder), eval_dir=str(eval_root), num_classes=3)
  with pytest.raises(ValueError, match=r"only in eval \['cow'\], only in train \['cat'\]"):
    make_source(c, split="eval", global_batch=8, mesh=mesh, seed=0)
  with pytest.raises(ValueError, match="bad_images"):
    source(bad_images="ignore")


@pytest.mark.parametrize("in_memory", [False, True])
def test_unreadable_images_fail_naming_the_file_or_are_skipped(folder, mesh, in_memory):
  (folder / "bee" / "garbage.png").write_bytes(b"this is not a png at all")
  good = folder / "cat" / "img0.png"
  (folder / "cat" / "truncated.png").write_bytes(good.read_bytes()[:60])
  c = _config(source="folder", train_dir=str(folder), num_classes=3, image_size=8,
              in_memory=in_memory)
  with pytest.raises(ValueError, match="garbage.png|truncated.png"):
    src = make_source(c, split="train", global_batch=8, mesh=mesh, seed=0)
    _take(src.train_batches(), 3)  # 17 files, 2 batches per epoch: every file is read
  c.eval_dir, c.bad_images = str(folder), "skip"
  src = make_source(c, split="train", global_batch=8, mesh=mesh, seed=0)
  for b in _take(src.train_batches(), 2):
    np.testing.assert_array_equal(_class_of(b["image"]), b["label"])
  held = make_source(c, split="eval", global_batch=8, mesh=mesh, seed=0)
  masks = [np.asarray(b["mask"]) for b in held.eval_batches()]
  assert sum(m.sum() for m in masks) == 15 and held.skipped == 2


def test_failing_image_named_in_eval_pass(folder, mesh):
  c = _config(source="folder", train_dir=str(folder), eval_dir=str(folder), num_classes=3,
              image_size=8)
  # A header that does not open, or an empty file: named before any batch is read.
  for name, content in (("zz_bad.jpg", b"\xff\xd8\xff garbage"), ("zz_empty.png", b"")):
    (folder / "ant" / name).write_bytes(content)
    with pytest.raises(ValueError, match=f"cannot read image .*{name}"):
      make_source(c, split="eval", global_batch=8, mesh=mesh, seed=0)
    (folder / "ant" / name).unlink()
  # A JPEG damaged past its header: named when the pass decodes it.
  encoded = io.BytesIO()
  noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8)  # a long scan
  Image.fromarray(noise).save(encoded, format="JPEG")
  (folder / "ant" / "zz_cut.jpg").write_bytes(encoded.getvalue()[:len(encoded.getvalue()) // 2])
  src = make_source(c, split="eval", global_batch=8, mesh=mesh, seed=0)
  with pytest.raises(ValueError, match="zz_cut.jpg"):
    list(src.eval_batches())


# ---------------------------------------------------------------- TFDS (mocked)

def test_tfds_pipeline_on_mock_data(mesh):
  import tensorflow_datasets as tfds
  c = _config(source="tfds", name="cifar10", image_size=32, shuffle_buffer=64)
  with tfds.testing.mock_data(num_examples=40):
    reference = list(tfds.as_numpy(tfds.load("cifar10", split="test")))  # TFDS's own decoding
    src = make_source(c, split="eval", global_batch=16, mesh=mesh, seed=0)
    assert (src.num_examples, src.num_classes, src.image_shape) == (40, 10, (32, 32, 3))
    _check_batch(next(src.eval_batches()), 32)
    batches = [jax.tree.map(np.asarray, b) for b in src.eval_batches()]
    assert len(batches) == 3
    mask = np.concatenate([b["mask"] for b in batches])
    np.testing.assert_array_equal(mask, np.arange(48) < 40)
    images = np.concatenate([b["image"] for b in batches])[:40]
    np.testing.assert_array_equal(images, np.stack([ex["image"] for ex in reference]))
    np.testing.assert_array_equal(np.concatenate([b["label"] for b in batches])[:40],
                                  [ex["label"] for ex in reference])

    train = make_source(c, split="train", global_batch=16, mesh=mesh, seed=0)
    assert train.steps_per_epoch == 2
    stream = _take(train.train_batches(), 4)
    _check_batch(next(train.train_batches()), 32)
    seen = {x.tobytes() for x in np.stack([ex["image"] for ex in reference])}
    for b in stream:
      assert all(x.tobytes() in seen for x in b["image"])
    assert not np.array_equal(stream[0]["image"], stream[2]["image"])
    np.testing.assert_array_equal(next(train.train_batches(start_step=3))["image"],
                                  stream[3]["image"])

    c.update(host_resize=True, image_size=16)
    cropped = make_source(c, split="train", global_batch=16, mesh=mesh, seed=0)
    crops = _take(cropped.train_batches(), 4)
    _check_batch(next(cropped.train_batches()), 16)
    np.testing.assert_array_equal(next(cropped.train_batches(start_step=3))["image"],
                                  crops[3]["image"])
    c.update(host_resize=False, image_size=32, in_memory=True)
    memory = make_source(c, split="eval", global_batch=16, mesh=mesh, seed=0)
    assert isinstance(memory, ArraySource) and memory.num_examples == 40
    first = jax.tree.map(np.asarray, next(memory.eval_batches()))
    np.testing.assert_array_equal(first["image"], images[:16])
    with pytest.raises(ValueError, match="num_classes=100"):
      make_source(_config(source="tfds", name="cifar10", num_classes=100), split="train",
                  global_batch=16, mesh=mesh, seed=0)


# ---------------------------------------------------------------- JPEGs decoded at reduced scale

# The random-resized crop boxes the host drew before JPEGs were decoded at reduced scale
# (tfdata._sample_box of commit f90856e) for a 123 x 165 image, scale (0.02, 1.0), seeds
# (7, 2i) and (7, 2i + 1): row i holds example i's two views, each [top, left, height, width].
BOXES_BEFORE = np.array([
    [[22, 20, 31, 37], [7, 72, 99, 77]],
    [[13, 19, 75, 66], [5, 55, 73, 97]],
    [[23, 12, 48, 47], [6, 1, 105, 137]],
    [[85, 51, 26, 32], [34, 49, 80, 93]],
    [[61, 103, 27, 21], [2, 18, 119, 136]],
    [[0, 4, 121, 155], [38, 85, 41, 48]],
    [[5, 25, 117, 133], [19, 34, 32, 27]],
    [[11, 27, 68, 59], [17, 12, 95, 112]],
    [[29, 32, 59, 50], [16, 42, 67, 73]],
    [[18, 12, 25, 29], [35, 7, 59, 76]],
    [[0, 2, 123, 146], [42, 55, 45, 60]],
    [[58, 47, 49, 56], [13, 14, 42, 45]],
    [[35, 60, 63, 82], [3, 11, 100, 106]],
    [[11, 43, 62, 56], [3, 45, 79, 81]],
    [[2, 29, 104, 112], [4, 19, 96, 119]],
    [[15, 65, 78, 73], [24, 21, 47, 52]],
    [[6, 14, 114, 94], [3, 0, 117, 140]],
    [[9, 24, 111, 140], [4, 103, 54, 51]],
    [[4, 17, 86, 114], [25, 6, 89, 103]],
    [[1, 11, 117, 137], [6, 5, 114, 128]],
    [[34, 84, 60, 69], [12, 48, 85, 96]],
    [[73, 51, 38, 47], [0, 21, 116, 133]],
    [[37, 74, 72, 78], [54, 73, 26, 33]],
    [[7, 20, 112, 143], [0, 11, 123, 142]]])
SHAPE, SCALE, SIZE = (123, 165), (0.02, 1.0), 12  # 123 and 165 end in partial 8-pixel blocks


def _seeds(i, views=2):
  from supcon_jax.data import tfdata
  return tfdata.tf.constant([[7, 2 * i + v] for v in range(views)], tfdata.tf.int64)


def _jpeg(image, **options):
  encoded = io.BytesIO()
  Image.fromarray(image).save(encoded, format="JPEG", **options)
  return encoded.getvalue()


def _rule(side, needed):
  """The documented rule, by hand: the largest r in 1, 2, 4, 8 with side >= r * needed."""
  return max([1] + [r for r in (2, 4, 8) if side >= r * needed])


def _reduction_errors(encoded, full):
  """{r: how far libjpeg's decode at 1/r is from the means of r x r blocks of the full decode}
  (its reduced inverse DCTs round in fixed point and drop high frequencies)."""
  from supcon_jax.data import tfdata
  errors = {1: 0.0}
  for r in (2, 4, 8):
    h, w = full.shape[0] // r, full.shape[1] // r  # whole blocks only
    means = full[:h * r, :w * r].reshape(h, r, w, r, 3).mean(axis=(1, 3))
    reduced = tfdata.tf.io.decode_jpeg(encoded, ratio=r).numpy()[:h, :w]
    errors[r] = np.abs(reduced - means).max()
  return errors


def test_crop_boxes_are_those_drawn_before_reduced_decoding():
  from supcon_jax.data import tfdata
  for i, boxes in enumerate(BOXES_BEFORE):
    begin, extent = tfdata.crop_boxes(tfdata.tf.constant([*SHAPE, 3]), _seeds(i), SCALE)
    np.testing.assert_array_equal(np.concatenate([begin, extent], axis=1), boxes)
    # One view alone is the first of the two: adding views does not move the others' crops.
    begin, extent = tfdata.crop_boxes(tfdata.tf.constant([*SHAPE, 3]), _seeds(i, 1), SCALE)
    np.testing.assert_array_equal(np.concatenate([begin, extent], axis=1), boxes[:1])


def test_reduced_edges_and_ratio_follow_the_rule():
  from supcon_jax.data import tfdata
  edges = np.arange(200)
  for r in (1, 2, 4, 8):
    reduced = tfdata._reduced_edges(tfdata.tf.constant(edges, tfdata.tf.int32), r).numpy()
    # Reduced pixel j covers full-scale pixels [j r, (j + 1) r): every edge moves <= r / 2.
    assert (np.abs(reduced * r - edges) <= r / 2).all(), r
    assert (reduced <= -(-edges // r)).all()  # inside the ceil(H / r) pixels libjpeg gives
  sides = range(1, 200)
  got = [tfdata.RATIOS[int(tfdata._ratio_index(s, 12, tfdata.RATIOS))] for s in sides]
  assert got == [_rule(s, 12) for s in sides]
  # A source whose images' shorter sides are at most `side` sets up only the ratios they allow.
  for side in (None, 23, 24, 47, 48, 95, 96, 500):
    usable = tuple(r for r in (1, 2, 4, 8) if side is None or r <= _rule(side, 12))
    assert tfdata.usable_ratios(side, 12) == usable, side


def test_reduced_scale_crops_match_the_full_scale_path():
  from supcon_jax.data import tfdata
  tf = tfdata.tf
  y, x = np.mgrid[:SHAPE[0], :SHAPE[1]].astype(float)
  slope = 0.9  # the largest |d/dx| + |d/dy| of a channel, in levels per pixel
  ramps = np.stack([60 + 0.5 * x + 0.4 * y, 40 + 0.1 * x + 0.6 * y, 200 - 0.5 * x], axis=-1)
  encoded = _jpeg(ramps.round().astype(np.uint8), quality=95)
  full = tf.io.decode_jpeg(encoded).numpy().astype(float)  # the full-scale path's decode
  # Why the two paths may differ, each bound measured on this image or derived:
  # - libjpeg's decode at 1/r against the means of r x r blocks (_reduction_errors);
  # - the full-scale path samples single pixels, with JPEG's noise: measured against ramps;
  # - geometry: each crop edge is rounded to the reduced grid (<= r / 2 pixels) and a crop
  #   that ends in a partial last block reads a pixel averaged with the encoder's padding
  #   (<= r / 2 more): at most r pixels, so slope * r levels. Bilinear interpolation is exact
  #   on a ramp, of pixels or of block means (the mean of a ramp is its value at the centre);
  # - each side rounds to whole levels once: 1.
  noise, blocks = np.abs(full - ramps).max(), _reduction_errors(encoded, full)
  # Stripes of period 2, 4 and 8 columns in R, G and B: a decode at 1/r averages the ones of
  # period <= r flat and keeps the others, so the flat channels tell which r was used.
  stripes = (np.arange(SHAPE[1])[:, None] // [1, 2, 4] % 2) * 120 + 68
  striped = _jpeg(np.broadcast_to(stripes, (*SHAPE, 3)).astype(np.uint8), quality=100,
                  subsampling=0)
  used = []
  for i, boxes in enumerate(BOXES_BEFORE):
    r = _rule(boxes[:, 2:].min(), SIZE)
    used.append(r)
    crops = tfdata.random_crops(encoded, _seeds(i), SIZE, SCALE).numpy()
    assert crops.shape == (2, SIZE, SIZE, 3) and crops.dtype == np.uint8
    # Known to be a JPEG, or tested as one: the same crops.
    np.testing.assert_array_equal(
        tfdata.random_crops(encoded, _seeds(i), SIZE, SCALE, jpeg=True).numpy(), crops)
    for crop, (top, left, h, w) in zip(crops, boxes):
      want = tf.image.resize(full[top:top + h, left:left + w], [SIZE, SIZE]).numpy()
      tolerance = blocks[r] + noise + slope * r + 1
      assert np.abs(crop - want).max() <= tolerance, (i, r, np.abs(crop - want).max())
    spread = tfdata.random_crops(striped, _seeds(i), SIZE, SCALE).numpy().std(axis=(1, 2))
    spread = spread.max(axis=0)  # per channel, the larger of the two views'
    np.testing.assert_array_equal(spread < 1, [r >= 2, r >= 4, r >= 8], err_msg=f"{i}: {spread}")
    assert (spread[spread >= 1] > 10).all(), (i, spread)
  assert sorted(set(used)) == [1, 2, 4, 8]  # every ratio, and full scale, was exercised


@pytest.mark.parametrize("host_resize", [True, False])
def test_reduced_scale_evaluation_matches_the_full_scale_path(host_resize):
  from supcon_jax.data import tfdata
  tf = tfdata.tf
  h, w = 203, 267  # partial last blocks at every ratio
  y, x = np.mgrid[:h, :w].astype(float)
  ramps = np.stack([20 + 0.5 * x + 0.3 * y, 30 + 0.8 * y, 230 - 0.6 * x], axis=-1)
  encoded = _jpeg(ramps.round().astype(np.uint8), quality=95)
  full = tf.io.decode_jpeg(encoded).numpy().astype(np.float32)
  blocks = _reduction_errors(encoded, full)
  ratios = []
  for size in (16, 32, 64, 128):
    target = round(size / 0.875) if host_resize else size
    r = _rule(min(h, w), target)
    ratios.append(r)
    # An independent full-scale path: JAX's antialiased bilinear resize of the full decode,
    # then the central crop, as tfdata documents it.
    hw = np.asarray([h, w], np.float32)
    new = np.round(hw * target / hw.min()).astype(int) if host_resize else (size, size)
    resized = np.asarray(jax.image.resize(full, (*new, 3), "linear", antialias=True))
    top, left = (new[0] - size) // 2, (new[1] - size) // 2
    want = resized[top:top + size, left:left + size]
    got = tfdata.eval_image(tf.constant(encoded), size, host_resize).numpy()
    assert got.shape == (size, size, 3) and got.dtype == np.uint8
    # As for the training crops: libjpeg's reduction, and geometry on a ramp of slope 0.8:
    # the kernel cut at the image's edge weighs r x r blocks, not pixels (<= r / 2 pixels),
    # and a partial last block (<= r / 2 more); the full scale's antialiasing already
    # averages its JPEG noise away; whole levels (1).
    tolerance = blocks[r] + 0.8 * r + 1
    assert np.abs(got - want).max() <= tolerance, (size, r, np.abs(got - want).max())
  assert ratios == [8, 4, 2, 1]


def _position_image(h=48, w=64):
  """Red encodes the column and green the row, so a crop shows where it came from."""
  y, x = np.mgrid[:h, :w]
  return np.stack([x * 255 // (w - 1), y * 255 // (h - 1), np.full_like(x, 128)],
                  axis=-1).astype(np.uint8)


def test_host_drawn_views_of_one_image_come_from_different_regions(tmp_path, mesh):
  for c in range(2):
    (tmp_path / f"c{c}").mkdir()
    for i in range(8):
      Image.fromarray(_position_image()).save(tmp_path / f"c{c}" / f"{i}.png")
  cfg = _config(source="folder", train_dir=str(tmp_path), num_classes=2, image_size=16,
                host_resize=True)
  src = make_source(cfg, split="train", global_batch=16, mesh=mesh, seed=0,
                    crops=Crops(2, (0.08, 0.3)))
  images = np.asarray(next(src.train_batches())["image"])
  assert images.shape == (16, 2, 16, 16, 3)
  # Where each view lies in the image: its mean column and row (from red and green).
  centres = images[..., :2].astype(np.float32).mean(axis=(2, 3))  # [16 images, 2 views, 2]
  distance = np.abs(centres[:, 0] - centres[:, 1]).max(axis=-1)
  assert (distance > 20).mean() > 0.8, distance  # crops of <= 30% of the area rarely coincide
  # Each view is a random-resized crop, not the whole image: it spans a part of the columns.
  spans = images[..., 0].max(axis=(2, 3)) - images[..., 0].min(axis=(2, 3))
  assert (spans < 200).all(), spans
  # On the device such views are flipped and coloured, never cropped again.
  c = base_config()
  c.augment.update(policy="cropflip", n_views=2, flip_prob=0.0, crop_scale=(0.08, 0.3))
  c.data.update(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
  out = augment.from_config(c, host_cropped=True)(jax.random.key(0), images)
  np.testing.assert_allclose(np.asarray(out), images / 255.0, atol=1e-6)
  with pytest.raises(ValueError, match="2 views per image; augment.n_views=3"):
    augment.from_config(c, host_cropped=True, n_views=3)(jax.random.key(0), images)
  # The linear stage gets one host crop per image, of linear.crop_scale, and no device crop.
  c.data.update(cfg.to_dict())
  c.linear.update(batch_size=16, crop_scale=(0.08, 0.3))
  run = experiment.Run(c, str(tmp_path), methods.get("supcon"), mesh, started=0.0)
  run.train_source = src  # the pre-training source above
  linear = experiment._linear_source(run)
  one = np.asarray(next(linear.train_batches())["image"])
  assert linear is not src and one.shape == (16, 16, 16, 3)
  assert (one[..., 0].max(axis=(1, 2)) - one[..., 0].min(axis=(1, 2)) < 200).all()


def _quadrants(h=32, w=48):
  """Four flat colours, one per quadrant: red, green / blue, white."""
  image = np.zeros((h, w, 3), np.uint8)
  image[:h // 2, :w // 2] = (255, 0, 0)
  image[:h // 2, w // 2:] = (0, 255, 0)
  image[h // 2:, :w // 2] = (0, 0, 255)
  image[h // 2:, w // 2:] = (255, 255, 255)
  return image


def _quadrant_colours(image):
  """The mean colour inside each quadrant, away from the edges (JPEG rings there)."""
  h, w = image.shape[:2]
  parts = [image[:h // 2, :w // 2], image[:h // 2, w // 2:], image[h // 2:, :w // 2],
           image[h // 2:, w // 2:]]
  return np.stack([p[1:-1, 1:-1].reshape(-1, 3).mean(axis=0) for p in parts])


def _kinds_of_images(root):
  """One file per kind of image people have, and the upright RGB each must read as."""
  rgb = _quadrants()
  grey = np.asarray(Image.fromarray(rgb).convert("L").convert("RGB"))
  expected = {}
  Image.fromarray(rgb).convert("L").save(root / "grey.png")
  expected["grey.png"] = grey
  Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 9, np.uint8)]), "RGBA").save(
      root / "rgba.png")
  expected["rgba.png"] = rgb  # alpha dropped, not composited
  Image.fromarray(rgb).convert("P").save(root / "palette.png")
  expected["palette.png"] = rgb
  sixteen = (np.asarray(Image.fromarray(rgb).convert("L"), np.uint16) * 257).astype(np.uint16)
  Image.fromarray(sixteen).save(root / "sixteen.png")
  assert Image.open(root / "sixteen.png").mode.startswith("I")
  expected["sixteen.png"] = grey  # 16-bit levels v * 257 read as v
  Image.fromarray(rgb).convert("CMYK").save(root / "cmyk.jpg", quality=95)
  expected["cmyk.jpg"] = rgb
  exif = Image.Exif()
  exif[0x0112] = 6  # stored turned 90 degrees counter-clockwise: display turns it clockwise
  Image.fromarray(rgb).transpose(Image.Transpose.ROTATE_90).save(root / "exif6.jpg",
                                                                 quality=95, exif=exif)
  expected["exif6.jpg"] = rgb
  return expected


@pytest.mark.parametrize("in_memory", [True, False])
def test_folder_reads_every_kind_of_image_upright_in_rgb(tmp_path, mesh, in_memory):
  expected = _kinds_of_images((tmp_path / "a").mkdir() or tmp_path / "a")
  names = sorted(expected)
  cfg = _config(source="folder", train_dir=str(tmp_path), num_classes=1, image_size=16,
                in_memory=in_memory, val_per_class=0, eval_dir=str(tmp_path))
  src = make_source(cfg, split="eval", global_batch=8, mesh=mesh, seed=0)
  batch = jax.tree.map(np.asarray, next(src.eval_batches()))
  for name, image in zip(names, batch["image"]):  # a folder lists its files sorted
    want = _quadrant_colours(np.asarray(Image.fromarray(expected[name]).resize((16, 16))))
    np.testing.assert_allclose(_quadrant_colours(image), want, atol=12, err_msg=name)


@pytest.mark.parametrize("host_resize", [True, False])
def test_streamed_examples_never_call_python(tmp_path, mesh, host_resize):
  # EXIF orientations are read once, when the files are listed; decoding, cropping and
  # turning upright run as TensorFlow ops, never holding Python's lock.
  _kinds_of_images((tmp_path / "a").mkdir() or tmp_path / "a")  # exif6.jpg among them
  cfg = _config(source="folder", train_dir=str(tmp_path), num_classes=1, image_size=16,
                host_resize=host_resize)
  src = make_source(cfg, split="train", global_batch=8, mesh=mesh, seed=0)
  assert src._orientation is not None  # the EXIF table is in the graph checked
  graph = src._train_dataset(0, 1)._as_serialized_graph().numpy()
  assert b"DecodeAndCropJpeg" in graph and b"PyFunc" not in graph


def test_folder_headers_spare_each_example_what_no_image_needs(tmp_path, mesh):
  def graph(root):
    cfg = _config(source="folder", train_dir=str(root), num_classes=1, image_size=8,
                  host_resize=True)
    src = make_source(cfg, split="train", global_batch=8, mesh=mesh, seed=0)
    return src._train_dataset(0, 1)._as_serialized_graph().numpy()

  # Only JPEGs, too small to decode at 1/2 for 8 pixels: no per-example test of the format
  # (an If), no choice of a ratio (a Case), no decoder of other formats.
  (tmp_path / "small" / "a").mkdir(parents=True)
  for i in range(2):
    Image.fromarray(_quadrants(12, 15)).save(tmp_path / "small" / "a" / f"{i}.jpg")
  ops = graph(tmp_path / "small")
  assert b"DecodeAndCropJpeg" in ops
  assert not [op for op in (b"StatelessIf", b"StatelessCase", b"DecodeImage") if op in ops]
  # A PNG among them and a JPEG large enough: every image is tested, a ratio chosen.
  Image.fromarray(_quadrants(12, 15)).save(tmp_path / "small" / "a" / "png.png")
  Image.fromarray(_quadrants(32, 48)).save(tmp_path / "small" / "a" / "large.jpg")
  ops = graph(tmp_path / "small")
  assert all(op in ops for op in (b"StatelessIf", b"StatelessCase", b"DecodeImage"))


def test_eval_sample_is_spread_over_classes_not_the_first_rows():
  # Sorted by class, as image folders are: the first 20 rows are all class 0.
  labels = np.repeat(np.arange(4), 20).astype(np.int32)
  images = np.zeros((80, 8, 8, 3), np.uint8)
  images[..., 0] = np.arange(80)[:, None, None]
  source = ArraySource.from_arrays(images, labels, num_classes=4, global_batch=8,
                                   mesh=sharding.make_mesh(8))
  got = [b for b in source.eval_batches(max_examples=20)]
  ids = np.concatenate([np.asarray(b["image"])[np.asarray(b["mask"]) > 0, 0, 0, 0] for b in got])
  assert len(ids) == len(set(ids.tolist())) == 20
  assert len(set(labels[ids].tolist())) > 1
  again = np.concatenate([np.asarray(b["image"])[np.asarray(b["mask"]) > 0, 0, 0, 0]
                          for b in source.eval_batches(max_examples=20)])
  np.testing.assert_array_equal(ids, again)  # a fixed sample
  full = np.concatenate([np.asarray(b["image"])[np.asarray(b["mask"]) > 0, 0, 0, 0]
                         for b in source.eval_batches()])
  np.testing.assert_array_equal(full, np.arange(80))  # the whole split stays in order


def _numbered_folder(root, classes=2, per_class=8):
  for c in range(classes):
    (root / f"c{c}").mkdir(parents=True)
    for i in range(per_class):
      Image.fromarray(np.full((8, 8, 3), 10 * i + c, np.uint8)).save(root / f"c{c}" / f"{i}.png")
  return root


@pytest.mark.parametrize("bad_images", ["skip", "fail"])
def test_images_that_vanish_mid_run_are_skipped_and_counted_or_named(tmp_path, mesh, bad_images):
  root = _numbered_folder(tmp_path / "train")
  c = _config(source="folder", train_dir=str(root), num_classes=2, image_size=8,
              bad_images=bad_images)
  src = make_source(c, split="train", global_batch=8, mesh=mesh, seed=0)
  stream = src.train_batches(0)
  _take(stream, 2)  # the first epoch, read while every image was there
  (root / "c0" / "3.png").unlink()
  (root / "c1" / "5.png").write_bytes(b"no longer an image")
  if bad_images == "fail":
    with pytest.raises(ValueError, match=r"cannot read image .*(c0/3|c1/5)\.png"):
      _take(stream, 4)
    return
  # Two more epochs, each refilled from a second pass of its images. (What the pipeline had
  # read ahead before the files went is not skipped: hence at least one epoch's two.)
  batches = _take(stream, 4)
  assert all(b["image"].shape == (8, 8, 8, 3) for b in batches)
  assert src.skipped >= 2
  before = src.skipped
  _take(stream, 2)  # an epoch read entirely after the files went
  assert src.skipped == before + 2  # counted (and logged) as they are skipped


def test_when_every_image_is_gone_the_run_stops_instead_of_spinning(tmp_path, mesh):
  root = _numbered_folder(tmp_path / "train")
  c = _config(source="folder", train_dir=str(root), num_classes=2, image_size=8,
              bad_images="skip")
  src = make_source(c, split="train", global_batch=8, mesh=mesh, seed=0)
  stream = src.train_batches(0)
  _take(stream, 2)
  shutil.rmtree(root)  # e.g. the data disk went away
  outcome = []
  # In a thread, so that a regression (the reader spinning over empty epochs) fails the test
  # instead of hanging it.
  # (Batches read ahead before the files went may still come: ten is more than it holds.)
  reader = threading.Thread(target=lambda: outcome.append(_raised(_take, stream, 10)),
                            daemon=True)
  reader.start()
  reader.join(timeout=120)
  assert outcome, "the training stream hangs once every image is gone"
  assert isinstance(outcome[0], ValueError), outcome
  # The epoch that ran dry: with nothing read ahead, 0 of its batches; tf.data may have
  # prefetched one of them before the files went (how far it runs ahead depends on the load).
  assert re.search(r"epoch \d of the training data yielded [01] of its 2 batches.*have the "
                   "files gone", str(outcome[0])), outcome


def _raised(fn, *args):
  try:
    fn(*args)
  except Exception as e:  # noqa: BLE001  whatever the loop raised, the test reports it
    return e
  return None


def test_host_drawn_small_crops_cover_their_own_scale_at_their_own_size(tmp_path, mesh):
  # Multi-crop on the host: beside the 2 large views, 3 small crops of small_scale of the
  # image at small_size pixels, from the same decode, each from its own region.
  for c in range(2):
    (tmp_path / f"c{c}").mkdir()
    for i in range(8):
      Image.fromarray(_position_image(64, 64)).save(tmp_path / f"c{c}" / f"{i}.png")
  cfg = _config(source="folder", train_dir=str(tmp_path), num_classes=2, image_size=16,
                host_resize=True)
  crops = Crops(2, (0.9, 1.0), small_views=3, small_size=8, small_scale=(0.03, 0.05))
  src = make_source(cfg, split="train", global_batch=16, mesh=mesh, seed=0, crops=crops)
  batch = next(src.train_batches())
  assert batch["small"].sharding.spec == P("data")
  batch = jax.tree.map(np.asarray, batch)
  assert batch["image"].shape == (16, 2, 16, 16, 3)
  assert batch["small"].shape == (16, 3, 8, 8, 3)
  # A crop's span of columns (red) and rows (green), in image pixels: 3-5% of the area is a
  # box of 11 x 11 to 14.3 x 14.3 (aspect 3/4..4/3: sides 9.5..16.5); large ones span nearly
  # all 64.
  span = lambda x, ch: (x[..., ch].max(axis=(-1, -2)) - x[..., ch].min(axis=(-1, -2))) / 4.0
  for ch in (0, 1):
    small, large = span(batch["small"], ch), span(batch["image"], ch)
    assert ((small > 8) & (small < 17)).all(), small
    assert (large > 50).all(), large
  centres = batch["small"][..., :2].astype(np.float32).mean(axis=(2, 3))  # [16, 3, 2]
  assert (np.abs(centres[:, 0] - centres[:, 1]).max(-1) > 10).mean() > 0.7  # own regions
  # The first step's large crops are those of a source without small crops, unchanged.
  plain = make_source(cfg, split="train", global_batch=16, mesh=mesh, seed=0,
                      crops=Crops(2, (0.9, 1.0)))
  np.testing.assert_array_equal(np.asarray(next(plain.train_batches())["image"]),
                                batch["image"])
