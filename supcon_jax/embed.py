"""Embeds a folder of images with a trained model, and shows what its nearest neighbours are.

  python -m supcon_jax.embed --workdir=workdirs/digits/supcon --images=DIR --out=emb.npz \
      [--neighbours=5] [--step=N] [--batch-size=256] [--projection]

DIR holds either one sub-folder per class (torchvision's ImageFolder layout: the folder
names are the labels) or image files directly (unlabelled). Each file is decoded as training
decodes image folders (folder.decode: any image kind, EXIF upright, RGB), then embedded by
`load_encoder(--workdir)` exactly as `embed` embeds an array of it (its resize to the model's
size included): r, or z with --projection.

`--out` gets `embeddings` float32 [N, D] and `paths` [N], and with class folders `labels`
int [N] and `classes`. With `--neighbours K`: prints the K-nearest-neighbour class agreement
(cosine similarity, the query itself excluded: the fraction of each image's K neighbours
that share its label, averaged over the images) and draws `<out>_neighbours.png`, a few
queries each followed by its K neighbours, framed green (same label), red (another) or
grey (unlabelled).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import os
import sys
from collections.abc import Iterator, Sequence

import numpy as np

from supcon_jax import checkpoint, plotting
from supcon_jax.data import folder
from supcon_jax.trained import TrainedModel, load_encoder, pad_rows

QUERIES = 6  # rows of the retrieval picture
_THUMBNAIL = 96  # pixels: the picture shows the files themselves, shrunk


def list_image_files(root: str) -> tuple[list[str], np.ndarray | None, list[str] | None]:
  """(paths, labels, classes) of the images under `root`; labels and classes are None
  when `root` has no class sub-folders with images (then its own image files count)."""
  if not os.path.isdir(root):
    raise ValueError(f"image folder {root!r} does not exist or is not a directory")
  subdirs = [e.path for e in os.scandir(root) if e.is_dir() and not e.name.startswith(".")]
  if any(_has_images(d) for d in subdirs):
    files = folder.list_images(root)  # one layout rule for training and embedding
    return list(files.paths), np.asarray(files.labels, np.int64), list(files.classes)
  paths = sorted(e.path for e in os.scandir(root)
                 if e.is_file() and not e.name.startswith(".")
                 and e.name.lower().endswith(folder.IMAGE_EXTENSIONS))
  if not paths:
    raise ValueError(f"image folder {root} has no images (expected {root}/*.jpg, or "
                     f"{root}/<class>/*.jpg; extensions {', '.join(folder.IMAGE_EXTENSIONS)})")
  return paths, None, None


def _has_images(directory: str) -> bool:
  for _, dirs, names in os.walk(directory, followlinks=True):
    dirs[:] = [d for d in dirs if not d.startswith(".")]
    if any(n.lower().endswith(folder.IMAGE_EXTENSIONS) for n in names if not n.startswith(".")):
      return True
  return False


def embed_files(model: TrainedModel, paths: Sequence[str], *, batch_size: int = 256,
                projection: bool = False, progress: bool = True) -> np.ndarray:
  """float32 [N, D]: each file decoded (folder.decode: any image kind, EXIF upright, RGB),
  then embedded as `model.embed` embeds an array of it: one resize path for both."""
  parts = []
  for done, images in _read_batches(paths, model, batch_size):
    n = len(images)
    if len(paths) > batch_size:  # the last batch padded too: no second compile
      images = pad_rows(images, batch_size)
    parts.append(model.embed(images, batch_size=batch_size, projection=projection)[:n])
    if progress:
      _progress(done, len(paths))
  return np.concatenate(parts)


def _read_batches(paths: Sequence[str], model: TrainedModel, batch_size: int
                  ) -> Iterator[tuple[int, np.ndarray]]:
  """(files read so far, images [B, size, size, C] as `model.resize` makes them) batches;
  the next batch is decoded (threads) while the caller embeds this one."""
  with concurrent.futures.ThreadPoolExecutor(min(32, 4 * (os.cpu_count() or 1))) as pool:
    submit = lambda start: [pool.submit(folder.decode_or_error, p)
                            for p in paths[start:start + batch_size]]
    pending = submit(0)
    for start in range(0, len(paths), batch_size):
      current, pending = pending, submit(start + batch_size)
      images = []
      for path, future in zip(paths[start:start + batch_size], current):
        result = future.result()
        if isinstance(result, Exception):
          raise ValueError(f"cannot read image {path}: {result}")
        # Images differ in size: one at a time.
        images.append(model.resize(np.asarray(result, np.uint8)[None])[0])
      yield start + len(images), np.stack(images)


def _progress(done: int, total: int, width: int = 30) -> None:
  filled = width * done // total
  print(f"\rembedding [{'#' * filled}{'.' * (width - filled)}] {done}/{total} images",
        end="\n" if done == total else "", file=sys.stderr, flush=True)


def nearest_neighbours(embeddings: np.ndarray, k: int, *, chunk: int = 1024
                       ) -> tuple[np.ndarray, np.ndarray]:
  """(indices [N, k], cosine similarities [N, k]) of each row's k nearest other rows."""
  n = len(embeddings)
  if not 1 <= k < n:
    raise ValueError(f"{k} neighbours need at least {k + 1} images and k >= 1; there are {n}")
  x = embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
  indices, sims = [], []
  for start in range(0, n, chunk):  # [chunk, N] similarities at a time, not [N, N]
    sim = x[start:start + chunk] @ x.T
    rows = np.arange(len(sim))
    sim[rows, start + rows] = -np.inf  # a query is not its own neighbour
    top = np.argpartition(-sim, k - 1, axis=1)[:, :k]
    top = np.take_along_axis(top, np.argsort(-np.take_along_axis(sim, top, 1), axis=1), 1)
    indices.append(top)
    sims.append(np.take_along_axis(sim, top, 1))
  return np.concatenate(indices), np.concatenate(sims)


def class_agreement(neighbours: np.ndarray, labels: np.ndarray) -> float:
  """The fraction of each image's neighbours with its label, averaged over the images."""
  return float(np.mean(labels[neighbours] == labels[:, None]))


def _thumbnail(path: str) -> np.ndarray:
  image = folder.decode(path)
  image.thumbnail((_THUMBNAIL, _THUMBNAIL))
  return np.asarray(image)


@dataclasses.dataclass(frozen=True)
class Embedded:
  """What `run` wrote and measured."""
  npz: str
  count: int
  method: str
  step: int
  picture: str | None = None  # with neighbours
  agreement: float | None = None  # with neighbours and labels


def run(workdir: str, images: str, out: str, *, neighbours: int = 0, step: int | None = None,
        batch_size: int = 256, projection: bool = False) -> Embedded:
  """Embeds the images under `images` with the model of `workdir` into `out` (.npz)."""
  if batch_size < 1:
    raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
  paths, labels, classes = list_image_files(images)
  if neighbours and not 1 <= neighbours < len(paths):
    raise ValueError(f"--neighbours {neighbours} needs 1 <= K < the number of images "
                     f"({len(paths)})")
  model = load_encoder(workdir, step)
  embeddings = embed_files(model, paths, batch_size=batch_size, projection=projection)
  if not out.endswith(".npz"):
    out += ".npz"  # what np.savez would name it
  os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
  arrays = {"embeddings": embeddings, "paths": np.asarray(paths, str)}
  if labels is not None:
    arrays.update(labels=labels, classes=np.asarray(classes, str))
  np.savez(out, **arrays)
  done = Embedded(out, len(paths), model.method.name, model.step)
  if neighbours:
    idx, sims = nearest_neighbours(embeddings, neighbours)
    names = ([classes[i] for i in labels] if labels is not None
             else [os.path.basename(p) for p in paths])
    picture = plotting.neighbours(lambda i: _thumbnail(paths[i]), idx, sims, names, labels,
                                  out[:-len(".npz")] + "_neighbours.png", queries=QUERIES)
    agreement = None if labels is None else class_agreement(idx, labels)
    done = dataclasses.replace(done, picture=picture, agreement=agreement)
  return done


def main(argv: list[str] | None = None) -> None:
  """The command line (`supcon-embed`); a user error is one line on stderr and exit 1."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", required=True,
                      help="training workdir of one method, or an export directory")
  parser.add_argument("--images", required=True, help="folder of images (class sub-folders "
                      "optional)")
  parser.add_argument("--out", required=True, help="the .npz file to write")
  parser.add_argument("--neighbours", "--neighbors", type=int, default=0, metavar="K",
                      help="K-nearest-neighbour class agreement and picture")
  parser.add_argument("--step", type=int, default=None, help="checkpoint (default: newest)")
  parser.add_argument("--batch-size", type=int, default=256)
  parser.add_argument("--projection", action="store_true",
                      help="embed z (the projection head's output) instead of r")
  args = parser.parse_args(argv)
  try:
    done = run(args.workdir, args.images, args.out, neighbours=args.neighbours,
               step=args.step, batch_size=args.batch_size, projection=args.projection)
  except (ValueError, OSError, checkpoint.CheckpointError) as e:
    print(f"error: {' '.join(str(e).split())}", file=sys.stderr, flush=True)
    sys.exit(1)
  print(f"wrote {done.npz}: {done.count} embeddings ({'z' if args.projection else 'r'}) by "
        f"{done.method} step {done.step} of {args.workdir}")
  if done.agreement is not None:
    print(f"{args.neighbours}-nearest-neighbour class agreement (cosine): {done.agreement:.4f}")
  elif args.neighbours:
    print("no class folders: no class agreement")
  if done.picture:
    print(f"wrote {done.picture}")


if __name__ == "__main__":
  main()
