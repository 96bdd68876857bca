"""Host input throughput of a streamed image folder: `python -m benchmarks.host_input ...`.

  python -m benchmarks.host_input --data-dir DIR --make-folder [synthetic|photos|small]
  python -m benchmarks.host_input --data-dir DIR --image-size 224 --views 2
  python -m benchmarks.host_input --data-dir DIR --compare REF     # REF: a git ref or checkout

Times `train_batches()` of the folder source with `data.host_resize` (each view's
random-resized crop drawn on the host, as for ImageNet) on one device: the samples per second
at which the host can feed a step, and the CPU time each sample costs.

Every timing runs in a fresh process (3 batches of warm-up, then `--seconds` timed), twice a
round: with all the CPUs this process may use, and pinned to one of them
(`os.sched_setaffinity` before TensorFlow starts, so its thread pools fit). `--rounds` rounds
alternate the pipelines (with --compare, REF's and this checkout's) so that load from other
work on the machine falls on both alike; the table gives each one's median over the rounds.
--compare REF exports REF's `supcon_jax` (`git archive`), or takes a checkout's, and times it
with this script.

--floor adds a row that only reads each file and decodes the JPEG window holding its views'
crop boxes (this checkout's sampler and decode, no resize, no batch handed to JAX): the cost
no pipeline that decodes on the host with TensorFlow can go below, and so the largest gain
over REF any change to the rest can bring.

--make-folder writes 512 JPEGs in class folders first: "synthetic" 500x375 gradients with
noise, "photos" copies of scikit-learn's two sample photographs (random 75-100% crops,
flipped or not, resized to 500x375 or 400x300, quality 90), "small" 32x32 gradients with
noise (CIFAR-size).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # this checkout
FOLDERS = ("synthetic", "photos", "small")
FLOOR = "decode floor"


def _gradient(h: int, w: int, i: int, rng: np.random.Generator) -> np.ndarray:
  y, x = np.mgrid[0:h, 0:w]
  image = np.stack([x * 255 // w, y * 255 // h, (x + y + 7 * i) % 256], axis=-1)
  return np.clip(image + rng.integers(0, 30, image.shape), 0, 255).astype(np.uint8)


def _photo(source, i: int, rng: np.random.Generator):
  from PIL import Image
  w, h = ((500, 375), (400, 300))[i % 2]
  f = rng.uniform(0.75, 1.0)
  cw, ch = int(source.width * f), int(source.height * f)
  x, y = rng.integers(0, source.width - cw + 1), rng.integers(0, source.height - ch + 1)
  image = source.crop((x, y, x + cw, y + ch)).resize((w, h), Image.BILINEAR)
  return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else image


def make_folder(root: str, kind: str = "synthetic", count: int = 512) -> None:
  """`count` JPEGs of `kind` (see the module docstring) in class folders under `root`."""
  from PIL import Image
  rng = np.random.default_rng(0)
  if kind == "photos":
    from sklearn.datasets import load_sample_images
    sources = [Image.fromarray(a) for a in load_sample_images().images]  # china, flower
  elif kind in ("synthetic", "small"):
    sources = [None] * 4
  else:
    raise ValueError(f"--make-folder {kind!r}: expected one of {', '.join(FOLDERS)}")
  for c, source in enumerate(sources):
    os.makedirs(os.path.join(root, f"c{c}"), exist_ok=True)
    for i in range(count // len(sources)):
      if source is not None:
        image = _photo(source, i, rng)
      else:
        image = Image.fromarray(_gradient(*((375, 500) if kind == "synthetic" else (32, 32)),
                                          i, rng))
      image.save(os.path.join(root, f"c{c}", f"{i}.jpg"), quality=90)


def _decode_floor(data_dir: str, *, image_size: int, views: int, batch: int):
  """Batches of the decoded windows' heights: each file read and the window that holds its
  views' crop boxes decoded, as the pipeline does before it resizes."""
  from supcon_jax import data
  from supcon_jax.data import folder, tfdata
  tf = tfdata.tf
  files, headers, _ = folder.read_headers(data.list_images(data_dir))
  ratios = tfdata.usable_ratios(max(h.shorter_side for h in headers), image_size)

  def window_height(index, path):
    seeds = tf.stack([tf.zeros([views], tf.int64), index * views + tf.range(views, dtype=tf.int64)],
                     axis=1)
    image, _, _ = tfdata.jpeg_window(tf.io.read_file(path), [(seeds, image_size, (0.08, 1.0))],
                                     ratios)
    return tf.shape(image)[0]

  paths = tf.data.Dataset.from_tensor_slices(list(files.paths))
  ds = paths.repeat().enumerate().map(window_height, num_parallel_calls=tf.data.AUTOTUNE)
  return ds.batch(batch).prefetch(2).as_numpy_iterator()


def time_pipeline(data_dir: str, *, image_size: int, views: int, batch: int,
                  seconds: float, floor: bool = False) -> dict[str, float]:
  """samples/s and CPU ms per sample over the batches read in `seconds`, after 3 batches of
  warm-up, in this process (its first `supcon_jax` on the path). floor: _decode_floor's
  batches instead of the folder source's."""
  import resource

  import jax

  from supcon_jax import config as config_lib
  from supcon_jax import data, sharding
  if floor:
    stream = _decode_floor(data_dir, image_size=image_size, views=views, batch=batch)
  else:
    c = config_lib.base_config().data
    c.source, c.train_dir, c.image_size, c.host_resize = "folder", data_dir, image_size, True
    c.num_classes = len(data.list_images(data_dir).classes)
    source = data.make_source(c, split="train", global_batch=batch,
                              mesh=sharding.make_mesh(1), seed=0,
                              crops=data.Crops(views, (0.08, 1.0)))
    stream = source.train_batches(0)
  for _ in range(3):
    jax.block_until_ready(next(stream))
  cpu = resource.getrusage(resource.RUSAGE_SELF)
  start, batches = time.perf_counter(), 0
  while time.perf_counter() - start < seconds:
    jax.block_until_ready(next(stream))
    batches += 1
  wall = time.perf_counter() - start
  end = resource.getrusage(resource.RUSAGE_SELF)
  used = end.ru_utime + end.ru_stime - cpu.ru_utime - cpu.ru_stime
  samples = batches * batch
  return {"samples_per_s": samples / wall, "cpu_ms_per_sample": 1e3 * used / samples}


def _run(code_root: str, args: argparse.Namespace, cores: int,
         floor: bool = False) -> dict[str, float]:
  """time_pipeline in a fresh process importing `supcon_jax` from code_root, on `cores` CPUs."""
  command = [sys.executable, os.path.abspath(__file__), "--data-dir", args.data_dir,
             "--image-size", str(args.image_size), "--views", str(args.views), "--batch",
             str(args.batch), "--seconds", str(args.seconds), "--worker", str(cores)]
  command += ["--floor"] if floor else []
  env = dict(os.environ, PYTHONPATH=code_root, TF_CPP_MIN_LOG_LEVEL="2")
  done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
  if done.returncode:
    raise RuntimeError(f"timing the pipeline of {code_root} failed:\n{done.stderr[-3000:]}")
  return json.loads(done.stdout.strip().splitlines()[-1])


def _export(ref: str, into: str) -> str:
  """The root of a copy of `supcon_jax` at git ref `ref` (or `ref` itself: a checkout)."""
  if os.path.isdir(os.path.join(ref, "supcon_jax")):
    return ref
  archive = os.path.join(into, "ref.tar")
  done = subprocess.run(["git", "-C", HERE, "archive", "--output", archive, ref, "supcon_jax"],
                        capture_output=True, text=True, check=False)
  if done.returncode:
    raise SystemExit(f"--compare {ref}: neither a checkout nor a git ref here: {done.stderr}")
  with tarfile.open(archive) as tar:
    tar.extractall(into, filter="data")
  return into


def _table(rows: dict[tuple[str, int], list[dict[str, float]]]) -> str:
  lines = ["| pipeline | CPUs | samples/s | samples/s per CPU | CPU ms / sample |",
           "| --- | --- | --- | --- | --- |"]
  medians = {}
  for key, runs in rows.items():
    name, cores = key
    rate = statistics.median(r["samples_per_s"] for r in runs)
    ms = statistics.median(r["cpu_ms_per_sample"] for r in runs)
    medians[key] = rate
    lines.append(f"| {name} | {cores} | {rate:,.0f} | {rate / cores:,.0f} | {ms:.2f} |")
  names = [name for name in dict.fromkeys(name for name, _ in rows) if name != FLOOR]
  for other in names[1:] + ([FLOOR] if (FLOOR, 1) in rows else []):
    for cores in sorted({c for _, c in rows}, reverse=True):
      ratio = medians[(other, cores)] / medians[(names[0], cores)]
      lines.append(f"| ratio {other} / {names[0]} | {cores} | {ratio:.2f}x | | |")
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
  """The command line: time the pipeline(s), print a Markdown table."""
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--data-dir", required=True)
  p.add_argument("--make-folder", nargs="?", const="synthetic", choices=FOLDERS,
                 help="write 512 JPEGs of this kind there first (default synthetic)")
  p.add_argument("--image-size", type=int, default=224)
  p.add_argument("--views", type=int, default=2)
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--seconds", type=float, default=4.0, help="timed per run, after warm-up")
  p.add_argument("--rounds", type=int, default=3, help="alternating timings of each pipeline")
  p.add_argument("--compare", metavar="REF", help="a git ref or checkout to time beside this one")
  p.add_argument("--floor", action="store_true",
                 help="also time reading and decoding alone (see above)")
  p.add_argument("--worker", type=int, help=argparse.SUPPRESS)  # internal: time, on N CPUs
  args = p.parse_args(argv)
  if args.rounds < 1 or args.seconds <= 0 or args.batch < 1 or args.views < 1:
    p.error("--rounds, --batch and --views must be at least 1 and --seconds positive")
  if args.worker is not None:
    if args.worker == 1:  # before TensorFlow and XLA start, so their pools have one CPU
      os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    print(json.dumps(time_pipeline(args.data_dir, image_size=args.image_size,
                                   views=args.views, batch=args.batch,
                                   seconds=args.seconds, floor=args.floor)))
    return
  if args.make_folder:
    make_folder(args.data_dir, args.make_folder)
  if not os.path.isdir(args.data_dir):
    p.error(f"--data-dir {args.data_dir} is not a folder (--make-folder writes one)")
  all_cores = len(os.sched_getaffinity(0))
  with tempfile.TemporaryDirectory() as tmp:
    roots = {"this checkout": HERE}
    if args.compare:
      roots = {args.compare: _export(args.compare, tmp), **roots}
    names = list(roots) + ([FLOOR] if args.floor else [])
    rows: dict[tuple[str, int], list[dict[str, float]]] = {
        (name, cores): [] for name in names for cores in sorted({all_cores, 1}, reverse=True)}
    for _ in range(args.rounds):
      for name, cores in rows:
        rows[(name, cores)].append(_run(roots.get(name, HERE), args, cores, name == FLOOR))
  print(f"{args.views} view(s) of {args.image_size} px, batch {args.batch}, {args.seconds:g} s "
        f"timed per run, median of {args.rounds} alternating rounds, {args.data_dir}")
  print(_table(rows))


if __name__ == "__main__":
  main()
