"""Host input throughput of a streamed image folder: `python -m benchmarks.host_input ...`.

  python -m benchmarks.host_input --data-dir DIR --image-size 224 --views 2
  python -m benchmarks.host_input --make-folder DIR      # 512 synthetic 500x375 JPEGs first

Times `train_batches()` of the folder source with `data.host_resize` (each view's
random-resized crop drawn on the host, as for ImageNet), on one device, and prints the
samples per second: the rate at which the host can feed a step. Best of `--repeats` runs of
`--batches` batches after a warm-up.
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import numpy as np

from supcon_jax import config as config_lib
from supcon_jax import data, sharding


def make_folder(root: str, classes: int = 4, per_class: int = 128) -> None:
  """ImageNet-sized JPEGs (500x375) with gradients and noise, in class folders."""
  rng = np.random.default_rng(0)
  from PIL import Image
  y, x = np.mgrid[0:375, 0:500]
  for c in range(classes):
    os.makedirs(os.path.join(root, f"c{c}"), exist_ok=True)
    for i in range(per_class):
      image = np.stack([x * 255 // 500, y * 255 // 375, (x + y + 7 * i) % 256], axis=-1)
      image = np.clip(image + rng.integers(0, 30, image.shape), 0, 255).astype(np.uint8)
      Image.fromarray(image).save(os.path.join(root, f"c{c}", f"{i}.jpg"), quality=90)


def samples_per_second(data_dir: str, *, image_size: int, views: int, batch: int,
                       batches: int, repeats: int) -> float:
  """The best rate over `repeats` timed runs of `batches` batches."""
  c = config_lib.base_config().data
  c.source, c.train_dir, c.image_size, c.host_resize = "folder", data_dir, image_size, True
  c.num_classes = len(data.list_images(data_dir).classes)
  source = data.make_source(c, split="train", global_batch=batch, mesh=sharding.make_mesh(1),
                            seed=0, crops=data.Crops(views, (0.08, 1.0)))
  stream = source.train_batches(0)
  for _ in range(3):
    jax.block_until_ready(next(stream))
  rates = []
  for _ in range(repeats):
    start = time.perf_counter()
    for _ in range(batches):
      jax.block_until_ready(next(stream))
    rates.append(batches * batch / (time.perf_counter() - start))
  return max(rates)


def main(argv: list[str] | None = None) -> None:
  """The command line: print samples/s for the folder and settings given."""
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--data-dir", required=True)
  p.add_argument("--make-folder", action="store_true", help="write synthetic JPEGs there first")
  p.add_argument("--image-size", type=int, default=224)
  p.add_argument("--views", type=int, default=2)
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--batches", type=int, default=12)
  p.add_argument("--repeats", type=int, default=3)
  args = p.parse_args(argv)
  if args.make_folder:
    make_folder(args.data_dir)
  rate = samples_per_second(args.data_dir, image_size=args.image_size, views=args.views,
                            batch=args.batch, batches=args.batches, repeats=args.repeats)
  print(f"{rate:,.0f} samples/s ({args.views} view(s) of {args.image_size} px each, "
        f"batch {args.batch}, best of {args.repeats} x {args.batches} batches, "
        f"{os.cpu_count()} CPUs)")


if __name__ == "__main__":
  main()
