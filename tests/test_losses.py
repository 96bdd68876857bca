"""supcon_jax.losses against float64 NumPy references written from the paper's equations."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.ad_checkpoint import print_saved_residuals
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from jax.test_util import check_grads

from supcon_jax import losses, sharding

N_DEV = 8
EPS = float(np.finfo(np.float32).eps)  # 2**-23 = 1.19e-7
STATIC = ("temperature", "base_temperature", "variant", "contrast_mode", "axis_name", "block_size")
# One compile per configuration instead of one per primitive keeps the file fast on CPU.
supcon = jax.jit(losses.supcon_loss, static_argnames=STATIC)
supcon_vg = jax.jit(jax.value_and_grad(losses.supcon_loss), static_argnames=STATIC)


def ref_supcon(feats, labels, *, temperature, base_temperature=None, variant="out",
               contrast_mode="all", extra=None, extra_labels=None):
  """Eqs. 2 and 3 of Khosla et al., one anchor at a time, in float64.

  `extra` rows [K, D] join every anchor's A(i); those with the anchor's label (never, with
  labels=None) join P(i). They are not anchors.
  """
  feats = np.asarray(feats, np.float64)
  batch, n_views, _ = feats.shape
  ids = np.arange(batch) if labels is None else np.asarray(labels)
  views = [(b, v) for b in range(batch) for v in range(n_views)]
  anchors = [(b, v) for (b, v) in views if contrast_mode == "all" or v == 0]
  extra = [] if extra is None else list(np.asarray(extra, np.float64))
  per_anchor = []
  for i in anchors:
    # Contrast rows as (vector, is_positive) pairs: the other batch views, then the extra rows.
    others = [(feats[a], ids[a[0]] == ids[i[0]]) for a in views if a != i]
    others += [(e, labels is not None and extra_labels[k] == ids[i[0]])
               for k, e in enumerate(extra)]
    positives = [z for z, is_pos in others if is_pos]
    if not positives:
      continue
    sim = lambda z, i=i: np.exp(feats[i] @ z / temperature)
    denom = sum(sim(z) for z, _ in others)
    if variant == "out":
      per_anchor.append(-np.mean([np.log(sim(p) / denom) for p in positives]))
    else:
      per_anchor.append(-np.log(np.mean([sim(p) / denom for p in positives])))
  if not per_anchor:
    return 0.0
  scale = 1.0 if base_temperature is None else temperature / base_temperature
  return scale * np.mean(per_anchor)


def reordered(loss, feats, labels, *, temperature, base_temperature=None, variant="out",
              contrast_mode="all", extra=None, extra_labels=None):
  """(rtol of the loss, atol of each gradient element): how far two float32 evaluations of
  supcon_loss may differ when their sums run in other orders (row blocks, devices, another
  compile), or one of them from the exact value. Worst case, every rounding the same way:
  the loss's sums are short, so even that bound stays within ~100 times what is seen.

  A sum of n float32 terms, reordered, moves by at most n * EPS * sum|x_i| (each of its
  n - 1 additions rounds by EPS / 2 of a partial sum, in each order). With unit features of
  `dim` components, c contrast rows, a anchors (with positives) and temperature t:
  - a logit z_i.z_j / t: `dim` products whose |.| sum to <= 1, then a division: off by
    (dim + 1) EPS / t;
  - an anchor's loss, its log-sum-exp over its <= c rows (the logits' error, c EPS relative
    from the sum, an ulp or two from exp and log: exp and log are not correctly rounded, so
    two implementations may differ) less the mean (or log-sum-exp) of <= c positive logits
    of size <= 1 / t (c EPS / t), then the result's rounding (2 EPS / t): at most
    ((c + 2 dim + 6) / t + 2c) EPS (the ulps of exp and log, 4 + 4 ln c, within c for the
    c >= 16 rows of these tests);
  - the loss, a mean of a terms >= 0 (so sum|x_i| is the sum itself): (a + 2) EPS relative
    more, with the division and the t / base_temperature scale.
  The gradient of feature row r is (sum_j G_rj z_j + sum_i G_ir z_i) / (a t): G = softmax
  less the positives' weights, the first sum over its row as an anchor (c terms), the second
  over its column as a contrast row (a terms). Each G moves by (softmax + weights) times the
  relative error of the logits, the log-sum-exp, exp and the division, below
  ((2 dim + 4) / t + 2c) EPS; the sums add (c + a) EPS of the sum of their |terms|, two
  products and the scale 4 EPS more. |G| <= softmax + weights, so each element's atol is
  ((2 dim + 4) / t + 3c + a + 4) EPS times sum (softmax + weights) |z| / (a t), computed here
  in float64.
  """
  feats = np.asarray(feats, np.float64)
  batch, n_views, dim = feats.shape
  rows = feats.reshape(-1, dim)  # sample-major, as supcon_loss lays them out
  ids = np.repeat(np.arange(batch) if labels is None else np.asarray(labels), n_views)
  extra = np.zeros((0, dim)) if extra is None else np.asarray(extra, np.float64)
  extra_ids = np.full(len(extra), -1) if extra_labels is None else np.asarray(extra_labels)
  contrast, contrast_ids = np.concatenate([rows, extra]), np.concatenate([ids, extra_ids])
  anchors = np.arange(0, len(rows), 1 if contrast_mode == "all" else n_views)
  logits = rows[anchors] @ contrast.T / temperature
  other = np.arange(len(contrast))[None, :] != anchors[:, None]
  positive = other & (ids[anchors, None] == contrast_ids[None, :])

  def softmax(mask):
    e = np.where(mask, np.exp(logits - logits.max(axis=1, keepdims=True)), 0.0)
    return e / np.maximum(e.sum(axis=1, keepdims=True), 1e-300)

  count = positive.sum(axis=1, keepdims=True)
  weights = softmax(positive) if variant == "in" else positive / np.maximum(count, 1)
  coeff = (softmax(other) + weights) * (count > 0)  # anchors without positives: left out
  a, c = int((count > 0).sum()), len(contrast)
  scale = 1.0 if base_temperature is None else temperature / base_temperature
  terms = np.zeros_like(rows)
  terms[anchors] += coeff @ np.abs(contrast)
  terms += coeff[:, :len(rows)].T @ np.abs(rows[anchors])
  terms *= scale / (a * temperature)
  per_anchor = (c + 2 * dim + 6) / temperature + 2 * c
  rtol = (a + 2 + scale * per_anchor / float(loss)) * EPS
  atol = ((2 * dim + 4) / temperature + 3 * c + a + 4) * EPS * terms
  return rtol, atol.reshape(feats.shape)


def assert_within(got, want, atol):
  """|got - want| <= atol element by element, `atol` an array of the same shape."""
  off = np.abs(np.asarray(got, np.float64) - np.asarray(want, np.float64))
  worst = np.unravel_index(np.argmax(off - atol), off.shape)
  assert (off <= atol).all(), (f"{(off > atol).sum()} of {off.size} elements beyond their "
                               f"tolerance; at {worst}: {off[worst]:.3g} > {atol[worst]:.3g}")


def random_features(seed, batch, n_views, dim, dtype=np.float32):
  x = np.random.default_rng(seed).normal(size=(batch, n_views, dim))
  return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(dtype)


def random_labels(seed, batch, num_classes):
  return np.random.default_rng(seed + 1000).integers(0, num_classes, batch).astype(np.int32)


@pytest.mark.parametrize(
    "variant,contrast_mode,n_views,temperature,base_temperature,num_classes",
    [
        ("out", "all", 2, 0.1, None, 3),
        ("in", "all", 2, 0.1, None, 3),
        ("out", "one", 3, 0.5, None, 4),
        ("in", "one", 3, 0.05, 0.07, 4),
        ("out", "all", 4, 1.0, 0.07, 2),
        ("in", "all", 1, 0.5, None, 4),  # some anchors have no positive
        ("out", "all", 1, 0.05, None, 4),
        ("out", "all", 2, 0.05, 0.07, None),  # SimCLR
        ("in", "one", 4, 1.0, None, None),
        ("out", "one", 1, 0.1, None, 2),  # n_views=1 and mode "one": positives in other samples
    ])
def test_supcon_matches_reference(variant, contrast_mode, n_views, temperature,
                                  base_temperature, num_classes):
  feats = random_features(0, 8, n_views, 6)
  labels = None if num_classes is None else random_labels(n_views, 8, num_classes)
  kwargs = dict(temperature=temperature, base_temperature=base_temperature, variant=variant,
                contrast_mode=contrast_mode)
  got = supcon(jnp.asarray(feats), None if labels is None else jnp.asarray(labels), **kwargs)
  assert got.dtype == jnp.float32 and got.shape == ()
  np.testing.assert_allclose(got, ref_supcon(feats, labels, **kwargs), rtol=2e-5, atol=1e-6)


def test_anchors_without_positives_left_out_of_mean():
  feats = random_features(1, 6, 1, 5)[:, 0]
  labels = np.array([0, 0, 1, 2, 3, 4], np.int32)  # only samples 0 and 1 have a positive
  got = supcon(jnp.asarray(feats[:, None]), jnp.asarray(labels), temperature=0.2)
  sim = np.exp(feats.astype(np.float64) @ feats.T.astype(np.float64) / 0.2)
  per_anchor = [-np.log(sim[i, 1 - i] / (sim[i].sum() - sim[i, i])) for i in (0, 1)]
  np.testing.assert_allclose(got, np.mean(per_anchor), rtol=2e-5)


@pytest.mark.parametrize("variant", ["out", "in"])
@pytest.mark.parametrize("batch", [1, 5])
def test_no_positives_gives_zero_and_finite_grads(variant, batch):
  feats = jnp.asarray(random_features(2, batch, 1, 4))
  labels = jnp.arange(batch)
  with jax.debug_nans(True):  # no NaN even in intermediates
    value, grad = supcon_vg(feats, labels, temperature=0.05, variant=variant)
  assert float(value) == 0.0
  assert np.all(np.isfinite(grad))


@pytest.mark.parametrize("variant", ["out", "in"])
def test_bfloat16_low_temperature(variant):
  feats = jnp.asarray(random_features(3, 16, 2, 32)).astype(jnp.bfloat16)
  labels = random_labels(3, 16, 4)
  got, grad = supcon_vg(feats, jnp.asarray(labels), temperature=0.05, variant=variant)
  assert got.dtype == jnp.float32 and grad.dtype == jnp.bfloat16
  assert np.all(np.isfinite(np.asarray(grad, np.float32)))
  rounded = np.asarray(feats.astype(jnp.float32))  # the reference sees the same bf16 values
  want = ref_supcon(rounded, labels, temperature=0.05, variant=variant)
  np.testing.assert_allclose(got, want, rtol=1e-5)


@pytest.mark.parametrize("variant", ["out", "in"])
def test_tiny_temperature_matches_reference(variant):
  # Near-duplicate views give logits of ~1/t = 100, whose exp overflows float32 without the
  # max subtraction.
  rng = np.random.default_rng(4)
  x = rng.normal(size=(4, 1, 3))
  feats = np.concatenate([x, x + 1e-3 * rng.normal(size=x.shape)], axis=1)
  feats = (feats / np.linalg.norm(feats, axis=-1, keepdims=True)).astype(np.float32)
  labels = np.array([0, 0, 1, 2], np.int32)
  value, grad = supcon_vg(jnp.asarray(feats), jnp.asarray(labels), temperature=0.01,
                          variant=variant)
  np.testing.assert_allclose(
      value, ref_supcon(feats, labels, temperature=0.01, variant=variant), rtol=1e-4)
  assert np.all(np.isfinite(grad))


@pytest.mark.parametrize("variant", ["out", "in"])
def test_gradients(variant):
  feats = random_features(5, 4, 2, 3)
  labels = np.array([0, 1, 0, 2], np.int32)
  f = jax.jit(lambda x: losses.supcon_loss(x, labels, temperature=0.5, variant=variant))
  # The loss is float32 even for float64 inputs, so finite differences need a coarse eps.
  check_grads(f, (jnp.asarray(feats),), order=1, modes=("rev",), eps=1e-3, atol=1e-2, rtol=1e-2)
  # Central differences of the float64 reference, element by element, are a tighter check.
  eps, want = 1e-6, np.zeros(feats.shape)
  for idx in np.ndindex(feats.shape):
    step = np.zeros(feats.shape)
    step[idx] = eps
    ref = lambda x: ref_supcon(x, labels, temperature=0.5, variant=variant)
    want[idx] = (ref(feats + step) - ref(feats - step)) / (2 * eps)
  np.testing.assert_allclose(jax.grad(f)(jnp.asarray(feats)), want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("block_size,variant", [(1, "in"), (3, "out"), (5, "in"), (40, "out")])
def test_block_size_matches_unblocked(block_size, variant):
  feats = jnp.asarray(random_features(6, 8, 2, 5))  # 16 anchor rows
  labels = jnp.asarray(random_labels(6, 8, 3))
  fn = lambda bs: supcon_vg(feats, labels, variant=variant, block_size=bs)
  (v0, g0), (v1, g1) = fn(None), fn(block_size)
  # The blocks sum the anchors' losses and the gradients' terms in another order.
  rtol, atol = reordered(v0, feats, labels, temperature=0.1, variant=variant)
  np.testing.assert_allclose(v1, v0, rtol=rtol)
  assert_within(g1, g0, atol)


def test_blocks_do_not_save_full_logits(capsys):
  feats = jnp.asarray(random_features(6, 8, 2, 5))  # 16 anchor rows x 16 contrast rows
  labels = jnp.asarray(random_labels(6, 8, 3))
  saved = {}
  for block_size in (None, 3):
    print_saved_residuals(lambda f, b=block_size: losses.supcon_loss(f, labels, block_size=b),
                          feats)
    saved[block_size] = capsys.readouterr().out
  assert "f32[16,16]" in saved[None]
  assert "[16,16]" not in saved[3] and "[3,16]" not in saved[3]


@pytest.fixture(scope="module")
def mesh():
  return sharding.make_mesh(N_DEV)  # the trainer's mesh: one "data" axis, AxisType.Auto


@pytest.mark.parametrize("use_labels,variant,contrast_mode,block_size", [
    (True, "out", "all", None),
    (True, "in", "all", 3),
    (False, "out", "all", 3),
    (False, "in", "all", None),
    (True, "out", "one", None),
])
def test_shard_map_matches_single_device(mesh, use_labels, variant, contrast_mode, block_size):
  batch = 2 * N_DEV
  feats = jnp.asarray(random_features(7, batch, 2, 4))
  labels = jnp.asarray(random_labels(7, batch, 4)) if use_labels else None
  # The wrapper is the jax.shard_map over "data"; each device holds 2 samples.
  _check_sharded_is_single_device(mesh, feats, labels, block_size, temperature=0.1,
                                  variant=variant, contrast_mode=contrast_mode)


def _check_sharded_is_single_device(mesh, feats, labels, block_size, **kwargs):
  """sharded_supcon_loss over `mesh`: the single-device value and gradient, and that value
  is the NumPy reference's."""
  want_v, want_g = supcon_vg(feats, labels, **kwargs)
  # Each device sums its anchors' losses and gradient terms, then the psum and the gather's
  # transpose add the devices' partial sums: the same sums in another order. The float64
  # reference differs from either by at most as much (one order's rounding, not two).
  rtol, atol = reordered(want_v, feats, labels, **kwargs)
  np.testing.assert_allclose(
      want_v, ref_supcon(np.asarray(feats), None if labels is None else np.asarray(labels),
                         **kwargs), rtol=rtol)
  sharded = lambda f: losses.sharded_supcon_loss(f, labels, mesh, block_size=block_size, **kwargs)
  got_v, got_g = jax.jit(jax.value_and_grad(sharded))(feats)
  np.testing.assert_allclose(got_v, want_v, rtol=rtol)
  assert_within(got_g, want_g, atol)


@pytest.mark.parametrize("use_labels", [True, False])
def test_sharded_wrapper_and_plain_jit_on_sharded_inputs(mesh, use_labels):
  batch = 2 * N_DEV
  batch_sharded = NamedSharding(mesh, P("data"))
  feats_np = random_features(8, batch, 2, 4)
  labels_np = random_labels(8, batch, 4) if use_labels else None
  feats = jax.device_put(feats_np, batch_sharded)
  labels = None if labels_np is None else jax.device_put(labels_np, batch_sharded)
  want = ref_supcon(feats_np, labels_np, temperature=0.1, variant="in")
  wrapped = jax.jit(lambda f, l: losses.sharded_supcon_loss(f, l, mesh, temperature=0.1,
                                                            variant="in", block_size=3))
  plain = jax.jit(lambda f, l: losses.supcon_loss(f, l, temperature=0.1, variant="in"))
  # float32 on 8 devices against the exact value: one order's rounding, within `reordered`.
  rtol, _ = reordered(want, feats_np, labels_np, temperature=0.1, variant="in")
  np.testing.assert_allclose(wrapped(feats, labels), want, rtol=rtol)
  np.testing.assert_allclose(plain(feats, labels), want, rtol=rtol)


def random_extra(seed, k, dim, dtype=np.float32):
  return random_features(seed + 2000, k, 1, dim, dtype)[:, 0]


# Batch labels for 6 samples and extra labels for 5 rows. "mixed": classes 0 and 3 only in the
# batch, 4 and 5 only in the extra set, 1 and 2 in both (with one view, samples 2 and 3 have
# positives only among the extra rows). "disjoint": extra rows are negatives only. None: SimCLR.
EXTRA_LABELS = {
    "mixed": ([0, 0, 1, 2, 3, 3], [1, 4, 4, 2, 5]),
    "one_class": ([0] * 6, [0] * 5),
    "disjoint": ([0, 0, 1, 2, 3, 3], [7, 8, 9, 7, 8]),
    "simclr": (None, None),
}


def extra_case(scheme, n_views, dim=4):
  labels, extra_labels = EXTRA_LABELS[scheme]
  to_np = lambda x: None if x is None else np.asarray(x, np.int32)
  return (random_features(10 + n_views, 6, n_views, dim), to_np(labels),
          random_extra(n_views, 5, dim), to_np(extra_labels))


def as_jnp(*xs):
  return [None if x is None else jnp.asarray(x) for x in xs]


@pytest.mark.parametrize("variant,contrast_mode,n_views,scheme,temperature,base_temperature", [
    ("out", "all", 2, "mixed", 0.1, None),
    ("in", "all", 2, "mixed", 0.1, None),
    ("out", "one", 3, "mixed", 0.5, 0.07),
    ("in", "one", 3, "mixed", 0.2, None),
    ("out", "all", 1, "mixed", 0.1, None),
    ("in", "all", 1, "mixed", 0.5, None),
    ("out", "one", 1, "mixed", 0.2, None),
    ("in", "all", 2, "one_class", 0.1, None),
    ("out", "one", 3, "one_class", 0.5, None),
    ("out", "all", 2, "disjoint", 0.1, 0.07),
    ("in", "one", 1, "disjoint", 0.2, None),
    ("out", "all", 2, "simclr", 0.1, None),
    ("in", "one", 3, "simclr", 0.5, None),
    ("out", "all", 1, "simclr", 0.1, None),  # no positive anywhere: 0
])
def test_extra_matches_reference(variant, contrast_mode, n_views, scheme, temperature,
                                 base_temperature):
  feats, labels, extra, extra_labels = extra_case(scheme, n_views)
  kwargs = dict(temperature=temperature, base_temperature=base_temperature, variant=variant,
                contrast_mode=contrast_mode)
  f, l, e, el = as_jnp(feats, labels, extra, extra_labels)
  got = supcon(f, l, extra=e, extra_labels=el, **kwargs)
  assert got.dtype == jnp.float32 and got.shape == ()
  want = ref_supcon(feats, labels, extra=extra, extra_labels=extra_labels, **kwargs)
  np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-6)
  if scheme == "simclr" and n_views == 1:
    assert float(got) == 0.0


@pytest.mark.parametrize("use_labels,variant,contrast_mode", [(True, "out", "all"),
                                                             (False, "in", "one")])
def test_empty_extra_is_todays_loss(use_labels, variant, contrast_mode):
  # bfloat16 features with a float32 queue: an empty queue must not promote the matmul either.
  feats = jnp.asarray(random_features(11, 6, 2, 4)).astype(jnp.bfloat16)
  labels = jnp.asarray(random_labels(11, 6, 3)) if use_labels else None
  empty = jnp.zeros((0, 4), jnp.float32)
  empty_labels = jnp.zeros(0, jnp.int32) if use_labels else None
  kwargs = dict(temperature=0.1, variant=variant, contrast_mode=contrast_mode)
  want_v, want_g = supcon_vg(feats, labels, **kwargs)
  for extra, extra_labels in ((None, None), (empty, empty_labels)):
    got_v, got_g = supcon_vg(feats, labels, extra=extra, extra_labels=extra_labels, **kwargs)
    np.testing.assert_array_equal(got_v, want_v)
    assert got_g.dtype == want_g.dtype
    np.testing.assert_array_equal(np.asarray(got_g, np.float32), np.asarray(want_g, np.float32))


@pytest.mark.parametrize("variant", ["out", "in"])
def test_extra_gradients(variant):
  feats = random_features(12, 4, 2, 3)
  labels = np.array([0, 1, 0, 2], np.int32)
  extra, extra_labels = random_extra(12, 3, 3), np.array([1, 3, 0], np.int32)
  kwargs = dict(temperature=0.5, variant=variant)
  f = jax.jit(lambda x, e: losses.supcon_loss(x, labels, extra=e, extra_labels=extra_labels,
                                              **kwargs))
  x, e = jnp.asarray(feats), jnp.asarray(extra)
  check_grads(lambda x: f(x, e), (x,), order=1, modes=("rev",), eps=1e-3, atol=1e-2, rtol=1e-2)
  eps, want = 1e-6, np.zeros(feats.shape)
  ref = lambda x: ref_supcon(x, labels, extra=extra, extra_labels=extra_labels, **kwargs)
  for idx in np.ndindex(feats.shape):
    step = np.zeros(feats.shape)
    step[idx] = eps
    want[idx] = (ref(feats + step) - ref(feats - step)) / (2 * eps)
  np.testing.assert_allclose(f(x, e), ref(feats), rtol=2e-5)
  grad_x, grad_e = jax.grad(f, argnums=(0, 1))(x, e)
  np.testing.assert_allclose(grad_x, want, rtol=1e-4, atol=1e-6)
  # The loss stops the gradient into the extra rows (MoCo keys are not trained through).
  np.testing.assert_array_equal(grad_e, np.zeros(extra.shape))


@pytest.mark.parametrize("block_size,variant,scheme", [(1, "in", "mixed"), (5, "out", "mixed"),
                                                       (4, "out", "simclr")])
def test_extra_block_size_matches_unblocked(block_size, variant, scheme):
  feats, labels, extra, extra_labels = as_jnp(*extra_case(scheme, 2))  # 12 anchor rows
  fn = lambda bs: supcon_vg(feats, labels, variant=variant, block_size=bs, extra=extra,
                            extra_labels=extra_labels)
  (v0, g0), (v1, g1) = fn(None), fn(block_size)
  # As test_block_size_matches_unblocked; the float64 reference is within one order's
  # rounding of either.
  rtol, atol = reordered(v0, feats, labels, temperature=0.1, variant=variant, extra=extra,
                         extra_labels=extra_labels)
  np.testing.assert_allclose(
      v0, ref_supcon(*extra_case(scheme, 2)[:2], temperature=0.1, variant=variant,
                     extra=extra, extra_labels=extra_labels), rtol=rtol)
  np.testing.assert_allclose(v1, v0, rtol=rtol)
  assert_within(g1, g0, atol)


@pytest.mark.parametrize("variant", ["out", "in"])
def test_extra_bfloat16(variant):
  feats = jnp.asarray(random_features(13, 16, 2, 32)).astype(jnp.bfloat16)
  labels = random_labels(13, 16, 4)
  extra = random_extra(13, 8, 32)  # a float32 queue, rounded to the features' bfloat16
  extra_labels = random_labels(14, 8, 6)
  got, grad = supcon_vg(feats, jnp.asarray(labels), temperature=0.05, variant=variant,
                        extra=jnp.asarray(extra), extra_labels=jnp.asarray(extra_labels))
  assert got.dtype == jnp.float32 and grad.dtype == jnp.bfloat16
  assert np.all(np.isfinite(np.asarray(grad, np.float32)))
  rounded = lambda x: np.asarray(jnp.asarray(x).astype(jnp.bfloat16).astype(jnp.float32))
  want = ref_supcon(rounded(feats), labels, temperature=0.05, variant=variant,
                    extra=rounded(extra), extra_labels=extra_labels)
  np.testing.assert_allclose(got, want, rtol=1e-5)


@pytest.mark.parametrize("variant", ["out", "in"])
def test_extra_without_positives_gives_zero_and_finite_grads(variant):
  feats = jnp.asarray(random_features(15, 5, 1, 4))
  extra = jnp.asarray(random_extra(15, 3, 4))
  cases = [(None, None), (jnp.arange(5), jnp.array([5, 6, 7]))]  # SimCLR; labels disjoint
  for labels, extra_labels in cases:
    with jax.debug_nans(True):
      value, grad = supcon_vg(feats, labels, temperature=0.05, variant=variant, extra=extra,
                              extra_labels=extra_labels)
    assert float(value) == 0.0
    assert np.all(np.isfinite(grad))


@pytest.mark.parametrize("use_labels,variant,contrast_mode,block_size", [
    (True, "out", "all", None),
    (True, "in", "all", 3),
    (False, "out", "all", 3),
    (False, "in", "one", None),
    (True, "out", "one", 2),
])
def test_shard_map_with_extra_matches_single_device(mesh, use_labels, variant, contrast_mode,
                                                    block_size):
  batch = 2 * N_DEV
  feats = jnp.asarray(random_features(16, batch, 2, 4))
  labels = jnp.asarray(random_labels(16, batch, 4)) if use_labels else None
  extra = jnp.asarray(random_extra(16, 6, 4))
  extra_labels = jnp.asarray(random_labels(17, 6, 6)) if use_labels else None
  # Each device holds 2 samples and the whole (replicated) extra set.
  _check_sharded_is_single_device(mesh, feats, labels, block_size, temperature=0.1,
                                  variant=variant, contrast_mode=contrast_mode, extra=extra,
                                  extra_labels=extra_labels)


def test_bad_extra_arguments():
  feats = jnp.zeros((4, 2, 3))
  labels = jnp.zeros(4, jnp.int32)
  extra, extra_labels = jnp.zeros((5, 3)), jnp.zeros(5, jnp.int32)
  with pytest.raises(ValueError, match="extra must be"):
    losses.supcon_loss(feats, labels, extra=extra[:, 0], extra_labels=extra_labels)
  with pytest.raises(ValueError, match="extra must be"):
    losses.supcon_loss(feats, labels, extra=jnp.zeros((5, 4)), extra_labels=extra_labels)
  with pytest.raises(ValueError, match="extra_labels shape"):
    losses.supcon_loss(feats, labels, extra=extra, extra_labels=extra_labels[:4])
  with pytest.raises(ValueError, match="extra_labels is required"):
    losses.supcon_loss(feats, labels, extra=extra)
  with pytest.raises(ValueError, match="extra_labels given with labels=None"):
    losses.supcon_loss(feats, None, extra=extra, extra_labels=extra_labels)
  with pytest.raises(ValueError, match="extra_labels given without extra"):
    losses.supcon_loss(feats, labels, extra_labels=extra_labels)


def test_bad_arguments():
  feats = jnp.zeros((4, 2, 3))
  labels = jnp.zeros(4, jnp.int32)
  with pytest.raises(ValueError, match="temperature"):
    losses.supcon_loss(feats, labels, temperature=0.0)
  with pytest.raises(ValueError, match="base_temperature"):
    losses.supcon_loss(feats, labels, base_temperature=-1.0)
  with pytest.raises(ValueError, match="variant"):
    losses.supcon_loss(feats, labels, variant="both")
  with pytest.raises(ValueError, match="contrast_mode"):
    losses.supcon_loss(feats, labels, contrast_mode="two")
  with pytest.raises(ValueError, match="features"):
    losses.supcon_loss(feats[:, 0], labels)
  with pytest.raises(ValueError, match="labels"):
    losses.supcon_loss(feats, labels[:3])
  with pytest.raises(ValueError, match="block_size"):
    losses.supcon_loss(feats, labels, block_size=0)
  with pytest.raises(ValueError, match="k must"):
    losses.topk_correct(jnp.zeros((2, 3)), jnp.zeros(2, jnp.int32), 4)
  with pytest.raises(ValueError, match="label_smoothing"):
    losses.cross_entropy_loss(jnp.zeros((2, 3)), jnp.zeros(2, jnp.int32), label_smoothing=1.0)
  with pytest.raises(ValueError, match="weights"):
    losses.cross_entropy_loss(jnp.zeros((2, 3)), jnp.zeros(2, jnp.int32), weights=jnp.ones(3))


def ref_cross_entropy(logits, labels, smoothing, weights):
  logits = np.asarray(logits, np.float64)
  per_example = []
  for row, y in zip(logits, labels):
    log_p = row - np.log(np.sum(np.exp(row)))
    target = np.full(len(row), smoothing / len(row))
    target[y] += 1.0 - smoothing
    per_example.append(-np.sum(target * log_p))
  w = np.ones(len(labels)) if weights is None else np.asarray(weights, np.float64)
  return np.sum(w * np.array(per_example)) / np.sum(w)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("use_weights", [False, True])
def test_cross_entropy(smoothing, use_weights):
  rng = np.random.default_rng(9)
  logits = (3 * rng.normal(size=(6, 5))).astype(np.float32)
  labels = rng.integers(0, 5, 6).astype(np.int32)
  weights = np.array([1, 1, 0, 1, 0, 1], np.float32) if use_weights else None
  got = losses.cross_entropy_loss(jnp.asarray(logits), jnp.asarray(labels),
                                  label_smoothing=smoothing,
                                  weights=None if weights is None else jnp.asarray(weights))
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(got, ref_cross_entropy(logits, labels, smoothing, weights), rtol=1e-5)


def test_topk():
  logits = jnp.array([[0.1, 0.5, 0.4, 0.0],   # ranking 1, 2, 0, 3
                      [0.9, 0.0, 0.3, 0.2],   # ranking 0, 2, 3, 1
                      [0.0, 0.1, 0.2, 0.3]])  # ranking 3, 2, 1, 0
  labels = jnp.array([2, 0, 0])
  np.testing.assert_array_equal(losses.topk_correct(logits, labels, 1), [0, 1, 0])
  np.testing.assert_array_equal(losses.topk_correct(logits, labels, 2), [1, 1, 0])
  np.testing.assert_array_equal(losses.topk_correct(logits, labels, 4), [1, 1, 1])
  np.testing.assert_allclose(losses.topk_accuracy(logits, labels), 1 / 3)
  np.testing.assert_allclose(losses.topk_accuracy(logits, labels, k=2), 2 / 3)
