"""Tests for supcon_jax.models.chunked: the chunked, rematerialised pass changes BN, not the loss.

The references are written out here: one `model.apply` on the whole batch, and a Python loop
over the chunks without remat. A tiny ResNet-18 (4..32 channels) on 8x8 images keeps the
compiles short, and each program is compiled once for the whole file; only the memory test
builds the real ResNet-18/4, and only compiles it.
"""

from __future__ import annotations

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from supcon_jax import augment, losses, methods, sharding
from supcon_jax.config import base_config
from supcon_jax.models import SupConModel
from supcon_jax.models.chunked import apply_in_chunks
from tests.rounding import resnet18_sums, rounding, smooth_activations

SAMPLES, VIEWS = 16, 2  # 32 images: in chunks of 8, one image per device per chunk on 8 devices
TEMPERATURE = 0.1  # supcon_loss's default, the loss of `loss_and_grad`
KEY = jax.random.key(0, impl="rbg")  # compiles faster than threefry; its values do not matter


def tiny_model():
  config = base_config()
  config.model.width = 0.0625
  return methods.get("supcon").build_model(config, 10)


MODEL = tiny_model()


@functools.cache
def tiny_variables():
  v = jax.jit(lambda x: MODEL.init(KEY, x, train=False))(jnp.zeros((1, 8, 8, 3)))
  # Running averages away from their (0, 1) start, so that keeping or dropping them shows.
  return {"params": v["params"], "batch_stats": jax.tree.map(lambda s: s + 0.5, v["batch_stats"])}


def batch(samples=SAMPLES, seed=0):
  """(images [samples * VIEWS, 8, 8, 3], sample-major as the methods lay out views; labels)."""
  r = np.random.default_rng(seed)
  # Per-image offsets, so that every chunk's BN statistics differ from the others'.
  images = r.normal(size=(samples * VIEWS, 8, 8, 3)) + r.normal(size=(samples * VIEWS, 1, 1, 3))
  return jnp.asarray(images, jnp.float32), jnp.asarray(r.integers(0, 3, samples), jnp.int32)


def loss_and_grad(apply, supcon=losses.supcon_loss):
  """Jitted value_and_grad of the SupCon loss on `apply(variables, images) -> (out, stats)`.

  Returns ((loss, (outputs, new batch_stats)), gradients w.r.t. the params).
  """
  def loss(params, batch_stats, images, labels):
    out, new_stats = apply({"params": params, "batch_stats": batch_stats}, images)
    z = out["proj"].reshape(labels.shape[0], VIEWS, -1)
    return supcon(z, labels), (out, new_stats)

  return jax.jit(jax.value_and_grad(loss, has_aux=True))


def chunked(chunk_size, model=MODEL):
  return lambda v, x: apply_in_chunks(model, v, x, chunk_size)


def plain(v, x):
  out, updates = MODEL.apply(v, x, train=True, mutable=["batch_stats"])
  return out, updates["batch_stats"]


def reference(chunk_size):
  """The chunked pass as the docstring defines it, in a Python loop without remat."""
  def apply(v, x):
    n = x.shape[0]
    k = n // chunk_size
    rows = [np.arange(c, n, k) for c in range(k)]  # chunk c: images c, c + k, c + 2k, ...
    outs, stats = zip(*(plain(v, x[r]) for r in rows))
    order = np.argsort(np.concatenate(rows))
    out = jax.tree.map(lambda *o: jnp.concatenate(o)[order], *outs)
    return out, jax.tree.map(lambda *s: sum(s) / k, *stats)

  return apply


@functools.cache
def run(how, chunk_size=None, devices=1):
  """(loss_and_grad's result, compiled HLO) of `how` on `batch()`, sharded over `devices`.

  With GELU for ReLU: the results include gradients (test_train's docstring)."""
  apply = {"plain": plain, "chunked": chunked(chunk_size), "reference": reference(chunk_size)}
  mesh = sharding.make_mesh(devices)
  put = lambda x, spec: jax.device_put(x, NamedSharding(mesh, spec))
  images, labels = batch()
  v = tiny_variables()
  args = (put(v["params"], P()), put(v["batch_stats"], P()),
          put(images, P(sharding.DATA_AXIS)), put(labels, P(sharding.DATA_AXIS)))
  supcon = lambda z, l: losses.sharded_supcon_loss(z, l, mesh)
  with smooth_activations():
    compiled = loss_and_grad(apply[how], supcon).lower(*args).compile()
  return jax.device_get(compiled(*args)), compiled.as_text()


def pass_sums(bn_images, *more):
  """(forward, backward) sums (test_train.resnet18_sums) of MODEL's training pass on the 32
  images of `batch()`, BatchNorm over `bn_images` at a time, and of the loss: 128 products
  a logit and log-sum-exps over 32 rows; `more`, more forward sums (chunks, devices, ...)."""
  forward = resnet18_sums(0.0625, 8, SAMPLES * VIEWS, bn_images=bn_images) + [128, 32]
  return forward + list(more), resnet18_sums(0.0625, 8, SAMPLES * VIEWS, backward=True)


def assert_leaves_close(got, want, rtol):
  """Each leaf within `rtol` of the largest |value| of its counterpart in `want`."""
  assert jax.tree.structure(got) == jax.tree.structure(want)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    w = np.asarray(w, np.float64)
    np.testing.assert_allclose(np.asarray(g), w, rtol=0, atol=rtol * np.abs(w).max(initial=0))


def assert_results_close(got, want, sums):
  """Two ((loss, (outputs, batch_stats)), gradients) of passes whose sums run in other
  orders, `sums` = (forward, backward) as `pass_sums`: the embeddings, unit vectors, differ
  by rounding(forward) (test_train's docstring), a logit by twice that / t, an anchor's loss
  (a log-sum-exp less a mean of logits) by twice the logits'; every output and BN statistic
  by rounding(forward) of its leaf's largest value; every gradient by rounding(forward +
  backward) of its leaf's largest."""
  forward, backward = sums
  (loss, (out, stats)), grads = got
  (want_loss, (want_out, want_stats)), want_grads = want
  np.testing.assert_allclose(loss, want_loss, rtol=0, atol=4 * rounding(forward) / TEMPERATURE)
  assert_leaves_close(out, want_out, rounding(forward))
  assert_leaves_close(stats, want_stats, rounding(forward))
  assert_leaves_close(grads, want_grads, rounding(forward + backward))


def test_one_chunk_is_the_plain_apply():
  # The same sums, compiled in lax.map's loop under remat: BatchNorm over all 32 images.
  assert_results_close(run("chunked", SAMPLES * VIEWS)[0], run("plain")[0],
                       pass_sums(SAMPLES * VIEWS))


def test_no_chunk_size_is_the_plain_apply():
  images, _ = batch()
  trace = lambda f: str(jax.make_jaxpr(f)(tiny_variables(), images))
  assert trace(chunked(None)) == trace(plain)


def test_chunks_match_a_loop_over_chunks():
  got = run("chunked", 8)[0]
  # BatchNorm over the 8 images of a chunk; the 4 chunks' statistics and gradients summed.
  assert_results_close(got, run("reference", 8)[0], pass_sums(8, 4))
  # Ghost BN is not the whole batch's BN: the chunks did change the statistics.
  stats = lambda result: jax.tree.leaves(result[0][1][1])[0]
  assert not np.allclose(stats(got), stats(run("plain")[0]))


def test_eight_devices_match_one():
  # As the loop over chunks, the devices' 8 partial sums of every statistic and gradient
  # added in another order (BN's 8 values a channel in the last stage, 1 x 1 pixels here,
  # count in BN_CONDITION).
  assert_results_close(run("chunked", 8, devices=8)[0], run("chunked", 8)[0], pass_sums(8, 4, 8))


def test_chunks_move_no_image_between_devices():
  # The only collectives that move data are the loss's gather of the embeddings (in its
  # shard_map) and BN's all-reduces: each device maps over its own share of every chunk.
  hlo = run("chunked", 8, devices=8)[1]
  moves = [line for line in hlo.splitlines()
           if re.search(r"\b(all-gather|all-to-all|collective-permute)(-start)?\(", line)
           and "shard_map" not in line]
  assert not moves, "\n".join(moves)


def test_chunks_cut_the_activation_memory():
  # The real encoder at the paper's CIFAR batch: 256 samples x 2 views, compiled only.
  model = SupConModel(18, width=0.25, stem="cifar")
  v = jax.eval_shape(lambda: model.init(KEY, jnp.zeros((1, 32, 32, 3)), train=False))
  args = (v["params"], v["batch_stats"], jax.ShapeDtypeStruct((512, 32, 32, 3), jnp.float32),
          jax.ShapeDtypeStruct((256,), jnp.int32))

  def temp_bytes(chunk_size):
    compiled = loss_and_grad(chunked(chunk_size, model)).lower(*args).compile()
    return compiled.memory_analysis().temp_size_in_bytes

  whole, chunks = temp_bytes(None), temp_bytes(32)
  assert chunks * 4 <= whole, (chunks, whole)


def test_augmenting_inside_the_chunks_is_augmenting_first():
  # What the training step does: each chunk augments its own views (keys and uint8 images).
  config = base_config()
  config.augment.update(policy="simaugment", blur_prob=0.5)
  augment_views = augment.from_config(config, per_view=True)
  r = np.random.default_rng(1)
  images = jnp.asarray(r.integers(0, 256, (SAMPLES, 8, 8, 3)), jnp.uint8)
  views = augment.view_inputs(jax.random.key(3), images, VIEWS)
  labels = jnp.asarray(r.integers(0, 3, SAMPLES), jnp.int32)
  v = tiny_variables()
  inside = loss_and_grad(lambda v, x: apply_in_chunks(MODEL, v, x, 8,
                                                      prepare=lambda k: augment_views(*k)))
  first = loss_and_grad(chunked(8))
  with smooth_activations():  # gradients compared: see test_train's docstring
    got = inside(v["params"], v["batch_stats"], views, labels)
    want = first(v["params"], v["batch_stats"], augment_views(*views), labels)
  # XLA fuses the augmentation into another program: its sums (a view's mean over 8 x 8
  # pixels for contrast, mixes of 3 channels) join those of the loop over chunks.
  assert_results_close(got, want, pass_sums(8, 4, 64, 3, 3))
  # And the views are those of the whole-batch augmentation, image-major.
  whole = augment.make_train_augment(config.augment, mean=config.data.mean,
                                     std=config.data.std)(jax.random.key(3), images)
  np.testing.assert_array_equal(np.asarray(augment_views(*views)),
                                np.asarray(whole).reshape((SAMPLES * VIEWS,) + whole.shape[2:]))


def test_augmenting_inside_the_chunks_keeps_no_float_view_of_the_batch():
  # The real encoder at 256 samples x 2 views with AutoAugment, compiled only: augmented in
  # the chunks, the step needs less temporary memory than augmenting the batch first.
  config = base_config()
  config.augment.policy = "autoaugment"
  augment_views = augment.from_config(config, per_view=True)
  model = SupConModel(18, width=0.25, stem="cifar")
  v = jax.eval_shape(lambda: model.init(KEY, jnp.zeros((1, 32, 32, 3)), train=False))

  def temp_bytes(inside):
    def loss(params, batch_stats, images, labels, rng):
      views = augment.view_inputs(rng, images, VIEWS)
      variables = {"params": params, "batch_stats": batch_stats}
      if inside:
        out, _ = apply_in_chunks(model, variables, views, 32, prepare=lambda k: augment_views(*k))
      else:
        out, _ = apply_in_chunks(model, variables, augment_views(*views), 32)
      return losses.supcon_loss(out["proj"].reshape(256, VIEWS, -1), labels)
    args = (v["params"], v["batch_stats"], jax.ShapeDtypeStruct((256, 32, 32, 3), jnp.uint8),
            jax.ShapeDtypeStruct((256,), jnp.int32), jax.random.key(0))
    compiled = jax.jit(jax.grad(loss)).lower(*args).compile()
    return compiled.memory_analysis().temp_size_in_bytes

  # At least the batch's float32 views, 512 x 32 x 32 x 3 x 4 bytes, less.
  assert temp_bytes(True) + 512 * 32 * 32 * 3 * 4 <= temp_bytes(False)


def test_inference_is_one_plain_apply():
  images, _ = batch(2)
  v = tiny_variables()
  # Running means of -0.5, not tiny_variables' +0.5: those switch off every ReLU of this
  # pass, and outputs of zeros compare equal whatever the pass did. Still not the initial 0.
  v = {**v, "batch_stats": jax.tree_util.tree_map_with_path(
      lambda path, s: -s if path[-1].key == "mean" else s, v["batch_stats"])}
  out, stats = jax.jit(lambda v, x: apply_in_chunks(MODEL, v, x, 2, train=False))(v, images)
  # Jitted against op by op: the convs' and the head's sums in other orders (no BatchNorm
  # sums: inference normalises with the running averages). No gradients: ReLU stays.
  inference = resnet18_sums(0.0625, 8, 2, train_mode=False)
  assert_leaves_close(out, MODEL.apply(v, images, train=False), rounding(inference))
  np.testing.assert_equal(jax.device_get(stats), jax.device_get(v["batch_stats"]))


@pytest.mark.parametrize("chunk_size", [0, -4, 3, 64, 4.0, True])
def test_bad_chunk_size(chunk_size):
  images, _ = batch()
  with pytest.raises(ValueError, match="chunk_size"):
    apply_in_chunks(MODEL, {}, images, chunk_size)
  with pytest.raises(ValueError, match="chunk_size"):
    apply_in_chunks(MODEL, {}, images, chunk_size, train=False)
