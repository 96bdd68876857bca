"""The run's random streams: one seed, one named stream per consumer, no key used twice.

Each consumer of randomness draws from its own stream, `stream(seed, name)`, and derives
every key it needs from that stream alone with `draw(stream, i, ...)`: training step k's key
is `draw(stream(seed, "pretrain"), k)`, epoch e's shuffle `draw(stream(seed, "data"), e)`.
Streams are `fold_in(key(seed), id(name))` with a 32-bit id hashed from the name, so no two
streams coincide and none is the seed's own key, which nothing uses: two consumers can never
draw the same key, as they did when they salted `key(seed)` with small integers that were
also step numbers.

Changing how a stream is derived changes a run's random draws; `RNG_SCHEME` numbers the
scheme, and checkpoints record it so that a run is never resumed under another one.
"""

from __future__ import annotations

import zlib

import jax

from supcon_jax.checks import one_of

# 1: every consumer salted key(seed) with a small integer (before this module).
# 2: the named streams of this module.
RNG_SCHEME = 2

STREAMS = (
    "init",  # the model's initial parameters (rbg keys: see train.init_model)
    "pretrain",  # pre-training step k: augmentation of its views
    "data",  # the order of the training examples in epoch e (in memory or tf.data)
    "eval_sample",  # the fixed sample of a split that kNN's memory bank reads
    "queue",  # the momentum encoder's initial queue
    "linear_init",  # the linear classifier's initial parameters
    "linear",  # linear-stage step k: the crop and flip of its images
    "linear_data",  # the order of the cached representations in linear epoch e
    "robustness",  # the on-device corruption of evaluation batch b at (severity, corruption)
    "label_noise",  # whether training example i's label is changed (data.label_noise), and to what
    "label_subset",  # the labelled examples a label fraction keeps (data/labelled.py)
)
_IDS = {name: zlib.crc32(name.encode()) for name in STREAMS}


def stream(seed: int, name: str, *, impl: str | None = None) -> jax.Array:
  """The key of stream `name` (one of `STREAMS`) of run seed `seed`."""
  one_of("random stream", name, STREAMS)
  return jax.random.fold_in(jax.random.key(seed, impl=impl), _IDS[name])


def draw(key: jax.Array, *indices: int | jax.Array) -> jax.Array:
  """The key at position `indices` of a stream (step, epoch, ...): one fold-in per index."""
  for i in indices:
    key = jax.random.fold_in(key, i)
  return key


def host_seed(seed: int, name: str, *indices: int) -> int:
  """A 31-bit integer seed from a stream, for host libraries (tf.data, NumPy) that take one."""
  bits = jax.random.bits(draw(stream(seed, name), *indices), dtype=jax.numpy.uint32)
  return int(bits) >> 1
