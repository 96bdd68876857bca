"""Image folders laid out one sub-folder per class (torchvision ImageFolder layout).

Classes are the sorted names of the sub-folders of the root; a class's images are the files
under its folder (searched recursively) ending in .jpg .jpeg .png .bmp .gif, any case.
Hidden files and folders (".name") are ignored, as are plain files in the root itself;
any other file is an error; data.classes keeps only the sub-folders it names, labelled in its
order. With data.eval_dir "" and data.val_per_class > 0, the evaluation split is
val_per_class images per class of train_dir, chosen by
`split_files(list_images(train_dir), val_per_class, split_seed)`; the rest train.

Every file is opened before the first step: decoded whole when held in memory, its header
read (its EXIF orientation, format and size with it) when streamed through tf.data, so an
empty or non-image file stops the run before any training (`read_headers`).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import logging
import os
from collections.abc import Sequence
from typing import NamedTuple

import jax
import numpy as np
from PIL import Image, ImageOps

from supcon_jax.checks import one_of
from supcon_jax.data import labelled
from supcon_jax.data.arrays import ArraySource
from supcon_jax.data.base import (
  EVAL_CROP,
  Crops,
  Source,
  check_num_classes,
  noisy_labels,
  stratified_holdout,
)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
BAD_IMAGES = ("fail", "skip")  # data.bad_images: stop at an unreadable image, or skip it
_ORIENTATION = 0x0112  # the EXIF tag


@dataclasses.dataclass(frozen=True)
class FileList:
  """Image files (sorted by class, then path) with their class indices."""
  root: str
  paths: tuple[str, ...]
  labels: tuple[int, ...]
  classes: tuple[str, ...]

  def __len__(self) -> int:
    return len(self.paths)

  def subset(self, indices: np.ndarray) -> FileList:
    """The files at `indices`, with their labels."""
    return FileList(self.root, tuple(self.paths[i] for i in indices),
                    tuple(self.labels[i] for i in indices), self.classes)


def _class_images(class_dir: str) -> list[str]:
  found = []
  for folder, dirs, names in os.walk(class_dir, followlinks=True):
    dirs[:] = [d for d in dirs if not d.startswith(".")]
    for name in names:
      if name.startswith("."):
        continue
      path = os.path.join(folder, name)
      if not name.lower().endswith(IMAGE_EXTENSIONS):
        raise ValueError(f"{path} is not an image file (expected one of "
                         f"{', '.join(IMAGE_EXTENSIONS)}); remove it or rename it")
      found.append(path)
  if not found:
    raise ValueError(f"class folder {class_dir} contains no images")
  return sorted(found)


def list_images(root: str, only: Sequence[str] = ()) -> FileList:
  """Every image under `root`, one sub-folder per class; ValueError on a bad layout.

  `only` (data.classes): just these sub-folders, labelled in this order; the others are not
  read at all (a subset of ImageNet's folder lists 100 of its 1,000).
  """
  if not os.path.isdir(root):
    raise ValueError(f"image folder {root!r} does not exist or is not a directory")
  classes = sorted(e.name for e in os.scandir(root)
                   if e.is_dir() and not e.name.startswith("."))
  if not classes:
    raise ValueError(f"image folder {root} has no class sub-folders (expected root/<class>/*.jpg)")
  if only:
    present = set(classes)
    missing = [name for name in only if name not in present]
    if missing:
      raise ValueError(f"image folder {root} has no sub-folder for {len(missing)} of the "
                       f"{len(only)} classes of data.classes: {', '.join(missing[:5])}"
                       f"{', ...' if len(missing) > 5 else ''}")
    classes = list(only)
  paths, labels = [], []
  for label, name in enumerate(classes):
    found = _class_images(os.path.join(root, name))
    paths += found
    labels += [label] * len(found)
  return FileList(root, tuple(paths), tuple(labels), tuple(classes))


def split_files(files: FileList, val_per_class: int, seed: int) -> tuple[FileList, FileList]:
  """(train, held-out): `val_per_class` files of every class held out, chosen by `seed`.

  Deterministic: the sorted listing and one NumPy RandomState(seed) (see
  base.stratified_holdout) decide it, so every run and every machine agrees.
  """
  held = stratified_holdout(files.labels, val_per_class, seed, files.classes)
  rest = np.setdiff1d(np.arange(len(files)), held)
  return files.subset(rest), files.subset(held)


def write_split(path: str, files: FileList) -> None:
  """Writes the files' paths relative to their root, one per line (e.g. the held-out split)."""
  with open(path, "w") as f:
    f.writelines(os.path.relpath(p, files.root) + "\n" for p in files.paths)


def folder_files(data_config, split: str) -> FileList:
  """The files of the "train" or "eval" split that data_config describes."""
  train = list_images(data_config.train_dir, data_config.classes)
  if not data_config.eval_dir and data_config.val_per_class > 0:
    rest, held = split_files(train, data_config.val_per_class, data_config.split_seed)
    return rest if split == "train" else held
  if split == "train":
    return train
  if not data_config.eval_dir:
    raise ValueError("the folder source has no evaluation split: set data.eval_dir or "
                     "data.val_per_class > 0")
  _warn_if_overlapping(data_config.train_dir, data_config.eval_dir)
  evaluation = list_images(data_config.eval_dir, data_config.classes)
  if evaluation.classes != train.classes:
    only_eval = sorted(set(evaluation.classes) - set(train.classes))
    only_train = sorted(set(train.classes) - set(evaluation.classes))
    raise ValueError(f"eval folder {data_config.eval_dir} has different classes from train "
                     f"folder {data_config.train_dir}: only in eval {only_eval}, only in "
                     f"train {only_train}")
  return evaluation


def _warn_if_overlapping(train_dir: str, eval_dir: str) -> None:
  """A warning naming both folders when evaluation images are (or may be) training images."""
  train, evaluation = os.path.realpath(train_dir), os.path.realpath(eval_dir)
  if train == evaluation:
    how = "is the same folder as"
  elif os.path.commonpath([train, evaluation]) == train:
    how = "is inside"
  elif os.path.commonpath([train, evaluation]) == evaluation:
    how = "contains"
  else:
    return
  logging.warning("data.eval_dir %s %s data.train_dir %s: the evaluation may score images "
                  "the model trained on", eval_dir, how, train_dir)


class Header(NamedTuple):
  """What a file's header says: its EXIF orientation code (1, upright, where it has none),
  whether it is a JPEG, and its shorter side in pixels."""
  orientation: int
  jpeg: bool
  shorter_side: int


def _header(path: str) -> Header | Exception:
  """The file's Header, or the exception opening it raised (an empty file, not an image)."""
  try:
    with Image.open(path) as image:
      # PIL tells JPEGs by the bytes tf.io.is_jpeg checks; MPO: a camera's multi-picture JPEG.
      return Header(int(image.getexif().get(_ORIENTATION, 1)), image.format in ("JPEG", "MPO"),
                    min(image.size))
  except Exception as err:  # noqa: BLE001  PIL reports a bad header many ways
    return err


def read_headers(files: FileList, bad_images: str = "fail"
                 ) -> tuple[FileList, list[Header], int]:
  """Opens every file's header once, before any training (threads): (the files that open,
  their headers, how many were skipped). A file that does not open stops here naming it, or
  with bad_images="skip" is left out and counted; a file whose data is damaged past its
  header is found when it is decoded."""
  with concurrent.futures.ThreadPoolExecutor(min(32, 4 * (os.cpu_count() or 1))) as pool:
    headers = list(pool.map(_header, files.paths))
  keep = [i for i, h in enumerate(headers) if not isinstance(h, Exception)]
  for path, header in zip(files.paths, headers):
    if isinstance(header, Exception):
      _unreadable(path, header, bad_images)
  _count_skipped(len(files) - len(keep), len(files), files.root)
  return files.subset(np.asarray(keep, int)), [headers[i] for i in keep], len(files) - len(keep)


def _unreadable(path: str, error: Exception, bad_images: str) -> None:
  """ValueError naming the file, or with bad_images="skip" a warning."""
  if bad_images == "fail":
    raise ValueError(f"cannot read image {path}: {error} (set data.bad_images='skip' to skip "
                     "unreadable images)") from error
  logging.warning("skipping unreadable image %s: %s", path, error)


def _count_skipped(skipped: int, total: int, root: str) -> None:
  if skipped:
    logging.warning("skipped %d unreadable image(s) of %d in %s", skipped, total, root)


def decode(path: str) -> Image.Image:
  """An RGB PIL image: turned upright by its EXIF orientation, alpha dropped, 16-bit to 8-bit.

  Reads what TensorFlow's decoders read the same way (tfdata.decode and tfdata.orient):
  grey, palette, RGBA, CMYK, 16-bit and EXIF-rotated images.
  """
  with Image.open(path) as image:
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16L", "I;16B", "I"):
      # PIL's convert("RGB") would clip 16-bit values at 255; keep the top 8 bits as TF does.
      image = Image.fromarray((np.asarray(image, np.uint32) >> 8).clip(0, 255).astype(np.uint8))
    return image.convert("RGB")  # decodes fully, so truncated files fail here


def decode_or_error(path: str) -> Image.Image | Exception:
  """`decode(path)`, or the exception that reading it raised (for reading files in threads
  and reporting each bad one afterwards)."""
  try:
    return decode(path)
  except Exception as err:  # noqa: BLE001  PIL reports corrupt data many ways
    return err


def _read(path: str, size: int, host_resize: bool) -> np.ndarray | Exception:
  """uint8 [size, size, 3], or the exception that reading it raised."""
  image = decode_or_error(path)
  if isinstance(image, Exception):
    return image
  if host_resize:  # the evaluation transform: shorter side to size / 0.875, central crop
    scale = round(size / EVAL_CROP) / min(image.size)
    w, h = round(image.width * scale), round(image.height * scale)
    left, top = (w - size) // 2, (h - size) // 2
    image = image.resize((w, h), Image.BILINEAR).crop((left, top, left + size, top + size))
  elif image.size != (size, size):
    image = image.resize((size, size), Image.BILINEAR)
  return np.asarray(image, np.uint8)


def load_images(files: FileList, size: int, *, host_resize: bool = False,
                bad_images: str = "fail") -> tuple[np.ndarray, np.ndarray, int]:
  """Decodes every file once with PIL (threads): (images, labels, number skipped)."""
  read = functools.partial(_read, size=size, host_resize=host_resize)
  with concurrent.futures.ThreadPoolExecutor(min(32, 4 * (os.cpu_count() or 1))) as pool:
    results = list(pool.map(read, files.paths))
  images, labels, skipped = [], [], 0
  for path, label, result in zip(files.paths, files.labels, results):
    if isinstance(result, Exception):
      _unreadable(path, result, bad_images)
      skipped += 1
      continue
    images.append(result)
    labels.append(label)
  _count_skipped(skipped, len(files), files.root)
  if not images:
    raise ValueError(f"no readable images in {files.root}")
  return np.stack(images), np.asarray(labels, np.int32), skipped


def make_folder_source(data_config, *, split: str, global_batch: int,
                       mesh: jax.sharding.Mesh, seed: int, crops: Crops,
                       labelled_only: bool = False) -> Source:
  """The image folder `data_config` names: in device memory, or streamed through tf.data.
  `labelled_only`: its labelled files alone (labelled.py), named by their path under the
  folder or their base name, chosen from the listing before unreadable files are skipped."""
  one_of("data.bad_images", data_config.bad_images, BAD_IMAGES)
  files = folder_files(data_config, split)
  check_num_classes(len(files.classes), data_config.num_classes, f"image folder {files.root}")
  subset = None
  if labelled_only:
    subset = labelled.choose(
        data_config, labels=files.labels, seed=seed, what=f"image folder {files.root}",
        names=[os.path.relpath(p, files.root) for p in files.paths],
        aliases=[os.path.basename(p) for p in files.paths])
  labels = noisy_labels(files.labels, data_config, split=split, seed=seed)
  files = dataclasses.replace(files, labels=tuple(int(y) for y in labels))
  if subset is not None:
    files = files.subset(subset.indices)
  source = _folder_source(files, data_config, global_batch=global_batch, mesh=mesh, seed=seed,
                          crops=crops)
  source.labelled = subset
  return source


def _folder_source(files: FileList, data_config, *, global_batch: int,
                   mesh: jax.sharding.Mesh, seed: int, crops: Crops) -> Source:
  """The source of `files` (labels final): decoded into device memory, or streamed."""
  if data_config.in_memory:
    images, labels, skipped = load_images(files, data_config.image_size,
                                          host_resize=data_config.host_resize,
                                          bad_images=data_config.bad_images)
    return ArraySource(images, labels, num_classes=len(files.classes),
                       global_batch=global_batch, mesh=mesh, seed=seed, skipped=skipped)

  files, headers, skipped = read_headers(files, data_config.bad_images)
  if not len(files):
    raise ValueError(f"no readable images in {files.root}")
  from supcon_jax.data import tfdata
  tf = tfdata.tf
  n, p = jax.process_count(), jax.process_index()
  records = tf.data.Dataset.from_tensor_slices(
      (list(files.paths), np.asarray(files.labels, np.int32))).shard(n, p)
  upright = None
  orientations = np.asarray([h.orientation for h in headers], np.int64)
  if (orientations != 1).any():  # most folders have none: spare every example the lookup
    upright = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(
        list(files.paths), orientations), default_value=1).lookup
  formats = {h.jpeg for h in headers}
  # Paths are cheap and sorted by class, so the shuffle buffer holds all of them.
  return tfdata.TfDataSource(
      records, host_counts=[len(range(i, len(files), n)) for i in range(n)],
      num_classes=len(files.classes), data_config=data_config, global_batch=global_batch,
      mesh=mesh, seed=seed, shuffle_buffer=len(files), crops=crops, load=tf.io.read_file,
      skip_bad=data_config.bad_images == "skip", name_of=lambda key: key.decode(),
      orientation=upright, skipped=skipped, jpeg=formats.pop() if len(formats) == 1 else None,
      shorter_side=max(h.shorter_side for h in headers))
