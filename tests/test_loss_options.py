"""The official code's loss options (`denominator_mode`, `positives_cap`) against a float64
reference written here from their definitions (google-research supcon/losses.py, matched in
its mathematics: this project's rows are sample-major, the official code's view-major), with
every variant, contrast mode, the row blocks, the extra (queue) rows and 8 devices."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from supcon_jax import losses, sharding
from tests.test_losses import EPS, random_extra, random_features

MODES = ("all", "one_positive", "only_negatives")


def ref_options(feats, labels, *, temperature, variant, contrast_mode, denominator_mode,
                positives_cap, extra=None, extra_labels=None):
  """One anchor at a time, in float64.

  Anchor i (sample s, view v) has its own other views as positives, then the views of other
  samples of its class and the extra rows of its class. With a cap, at most `positives_cap`
  of those: the first positives_cap / n_views samples by index, each with all its views,
  then extra rows in order while the count allows. Negatives: the rows of other classes.
  Denominator of positive p: "all", the (capped) positives and the negatives; "one_positive",
  p and the negatives; "only_negatives", the negatives.
  """
  feats = np.asarray(feats, np.float64)
  batch, n_views, _ = feats.shape
  ids = np.arange(batch) if labels is None else np.asarray(labels)
  extra = [] if extra is None else list(np.asarray(extra, np.float64))
  extra_ids = [-1] * len(extra) if extra_labels is None else list(extra_labels)
  per_anchor = []
  for s, v in itertools.product(range(batch), range(n_views if contrast_mode == "all" else 1)):
    z, label = feats[s, v], ids[s]
    own = [feats[s, w] for w in range(n_views) if w != v]
    samples = [b for b in range(batch) if b != s and ids[b] == label]
    queued = [k for k in range(len(extra)) if extra_ids[k] == label]
    if positives_cap >= 0:
      samples = samples[:positives_cap // n_views]
      queued = queued[:positives_cap - n_views * len(samples)]
    positives = own + [feats[b, w] for b in samples for w in range(n_views)]
    positives += [extra[k] for k in queued]
    negatives = [feats[b, w] for b in range(batch) if ids[b] != label for w in range(n_views)]
    negatives += [e for e, i in zip(extra, extra_ids) if i != label]
    if not positives or (denominator_mode == "only_negatives" and not negatives):
      continue  # left out of the mean
    sim = lambda x, z=z: np.exp(z @ x / temperature)
    neg = sum(sim(x) for x in negatives)
    if denominator_mode == "all":
      ratios = [sim(p) / (neg + sum(sim(q) for q in positives)) for p in positives]
    elif denominator_mode == "one_positive":
      ratios = [sim(p) / (sim(p) + neg) for p in positives]
    else:
      ratios = [sim(p) / neg for p in positives]
    per_anchor.append(-np.mean(np.log(ratios)) if variant == "out" else -np.log(np.mean(ratios)))
  return float(np.mean(per_anchor)) if per_anchor else 0.0


def _case(seed=0, batch=8, n_views=2, dim=6):
  """Features with repeated labels (3 classes in 8 samples) and 6 extra rows of 4 labels."""
  r = np.random.default_rng(seed)
  return (random_features(seed, batch, n_views, dim), r.integers(0, 3, batch).astype(np.int32),
          random_extra(seed, 6, dim), r.integers(0, 4, 6).astype(np.int32))


@pytest.mark.parametrize("mode,cap,variant,contrast_mode", [
    (m, c, v, cm) for m in MODES for c in (-1, 2) for v in ("out", "in") for cm in ("all", "one")])
def test_options_match_their_definitions(mode, cap, variant, contrast_mode):
  feats, labels, extra, extra_labels = _case()
  kw = dict(temperature=0.5, variant=variant, contrast_mode=contrast_mode,
            denominator_mode=mode, positives_cap=cap)

  @jax.jit
  def three(f, l, e, el):  # plain, in blocks of 5 anchor rows, and with the extra rows
    return (losses.supcon_loss(f, l, **kw), losses.supcon_loss(f, l, block_size=5, **kw),
            losses.supcon_loss(f, l, extra=e, extra_labels=el, **kw))

  plain, blocked, queued = three(*map(jnp.asarray, (feats, labels, extra, extra_labels)))
  # As test_losses' references: float32 sums of <= 22 terms of size <= 1 / t.
  np.testing.assert_allclose(plain, ref_options(feats, labels, **kw), rtol=2e-5, atol=1e-6)
  np.testing.assert_allclose(blocked, ref_options(feats, labels, **kw), rtol=2e-5, atol=1e-6)
  np.testing.assert_allclose(queued, ref_options(feats, labels, extra=extra,
                                                 extra_labels=extra_labels, **kw),
                             rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("mode", MODES)
def test_options_without_labels(mode):
  # SimCLR: a sample's other view is its one positive; the extra rows are negatives.
  feats, _, extra, _ = _case(1, n_views=3)
  kw = dict(temperature=0.2, variant="out", contrast_mode="all", denominator_mode=mode,
            positives_cap=3)
  got = jax.jit(lambda f, e: losses.supcon_loss(f, None, extra=e, **kw))(feats, extra)
  np.testing.assert_allclose(got, ref_options(feats, None, extra=extra, **kw), rtol=2e-5)


@pytest.mark.parametrize("variant", ["out", "in"])
def test_anchors_without_negatives_are_left_out_of_only_negatives(variant):
  # One class: no anchor has a negative, so none has a denominator: the loss is 0, finite.
  feats = jnp.asarray(random_features(3, 4, 2, 3))
  loss = lambda f: losses.supcon_loss(f, jnp.zeros(4, jnp.int32), variant=variant,
                                      denominator_mode="only_negatives")
  value, grad = jax.jit(jax.value_and_grad(loss))(feats)
  assert float(value) == 0.0 and np.isfinite(grad).all()


def test_the_cap_binds_and_each_mode_changes_the_loss():
  # The reference's cases above must tell the options apart, or they would prove nothing.
  feats, labels, extra, extra_labels = _case()
  values = {(m, c): ref_options(feats, labels, temperature=0.5, variant="out",
                                contrast_mode="all", denominator_mode=m, positives_cap=c,
                                extra=extra, extra_labels=extra_labels)
            for m in MODES for c in (-1, 2)}
  assert len({round(v, 6) for v in values.values()}) == len(values), values


@pytest.mark.parametrize("mode,cap,variant", [
    ("all", 2, "out"), ("one_positive", -1, "in"), ("one_positive", 2, "out"),
    ("only_negatives", -1, "out"), ("only_negatives", 2, "in")])
def test_options_on_eight_devices_are_the_single_device_loss(mode, cap, variant):
  mesh = sharding.make_mesh(8)
  feats, labels, extra, extra_labels = _case(2, batch=16)
  kw = dict(temperature=0.5, variant=variant, denominator_mode=mode, positives_cap=cap,
            extra=jnp.asarray(extra), extra_labels=jnp.asarray(extra_labels))
  labels = jnp.asarray(labels)
  single = jax.jit(jax.value_and_grad(lambda f: losses.supcon_loss(f, labels, **kw)))
  sharded = jax.jit(jax.value_and_grad(
      lambda f: losses.sharded_supcon_loss(f, labels, mesh, block_size=3, **kw)))
  (want_v, want_g), (got_v, got_g) = single(feats), sharded(jnp.asarray(feats))
  # The same sums in another order (test_losses.reordered, whose per-anchor bound covers any
  # log-sum-exp or mean over the <= c = 38 rows). The gradient of a row sums G_rj z_j over
  # its row as an anchor and G_ir z_i over its column: in every mode an anchor's G is a
  # mean of softmaxes less the positives' weights, so sum_j |G_rj| <= 2 and a column's sum
  # <= 2a over the a = 32 anchors, each term off by the same relative error as there.
  c, a, dim, t = 38, 32, 6, 0.5
  per_anchor = (c + 2 * dim + 6) / t + 2 * c
  np.testing.assert_allclose(got_v, want_v, rtol=(a + 2 + per_anchor / float(want_v)) * EPS)
  atol = ((2 * dim + 4) / t + 3 * c + a + 4) * EPS * (2 + 2 * a) / (a * t)
  np.testing.assert_allclose(got_g, want_g, rtol=0, atol=atol)
  np.testing.assert_allclose(want_v, ref_options(feats, np.asarray(labels), temperature=0.5,
                                                 variant=variant, contrast_mode="all",
                                                 denominator_mode=mode, positives_cap=cap,
                                                 extra=extra, extra_labels=extra_labels),
                             rtol=2e-5)


def test_bad_options_name_themselves():
  feats = jnp.zeros((4, 2, 3))
  with pytest.raises(ValueError, match="denominator_mode='some'"):
    losses.supcon_loss(feats, denominator_mode="some")
  with pytest.raises(ValueError, match="positives_cap=3 must be an int, < 0 for no cap or a "
                                       "multiple of the 2 views"):
    losses.supcon_loss(feats, positives_cap=3)
