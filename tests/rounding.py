"""The float32 rounding model behind the tolerance of every device-count and chunking
comparison of whole networks (test_train, test_momentum, test_chunked, test_models;
test_losses, whose sums are short, takes the worst case directly).

XLA sums in other orders on other processors and
for other device counts. A sum of n float32 terms rounds at each of its n - 1 additions by at
most EPS / 2 of a partial sum, so two orders differ by at most n * EPS times the partial
sums' size. Over the ~1e5 terms a network's step chains, that worst case (every rounding the
same way) would allow tens of percent after three steps. The roundings are independent and
of either sign, though: by Hoeffding's inequality their total exceeds LAMBDA * EPS *
sqrt(sum of the n) (partial sums of unit size, the scale BatchNorm keeps) with probability
at most 2 exp(-LAMBDA**2 / 2), 3e-8 for LAMBDA = 6: at most 3e-3 over the 1e5 values a
test compares (Higham and Mary, SIAM J. Sci. Comput. 41 (2019), argue so for one sum).
`resnet18_sums` lists the sums of a pass, `rounding` turns them into a relative difference,
`trained` follows that through training steps.

That needs a smooth network. ReLU's derivative jumps at 0, and among the 1e4..1e6
activations of a step an input within rounding of 0 is likely (with ReLU, test_train's
8-device run flips one and a leaf's trained state moves by 1.6% of its displacement):
rounding then decides whether that position's term is in its layer's gradient, up to
1 / sqrt(positions) of it, which no rounding bound covers. The comparisons that take
gradients therefore run the models with GELU for ReLU (`smooth_activations`); what they
test, how the batch, BatchNorm and the loss are split over devices or chunks, does not
depend on the nonlinearity.
"""

import contextlib
import math

import flax.linen
import jax
import numpy as np
import pytest

EPS = float(np.finfo(np.float32).eps)  # 2**-23 = 1.19e-7
LAMBDA = 6.0
# How much BatchNorm's statistics magnify their sums' rounding: the variance E[x^2] - E[x]^2
# keeps the error of partial sums of E[x^2]'s size, and the normalised output moves by the
# mean's error over the standard deviation plus x_hat / 2 times the variance's relative
# error: about sqrt(k) + k / 2 for k = E[x^2] / var, so 4 at the k of up to ~4 of these
# activations (more in a few channels of the last stage, whose sums of 8..128 values are the
# shortest).
BN_CONDITION = 4.0


@contextlib.contextmanager
def smooth_activations():
  """The models (resnet.py, heads.py call `nn.relu`) with GELU for ReLU while inside."""
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(flax.linen, "relu", jax.nn.gelu)
    yield


def rounding(sums) -> float:
  """The relative difference of a chain of float32 sums of these lengths (each weighted by
  its squared sensitivity) when they run in other orders: LAMBDA * EPS * sqrt(sum)."""
  return LAMBDA * EPS * math.sqrt(sum(sums))


def resnet18_sums(width, size, images, *, bn_images=None, train_mode=True, head=True,
                  backward=False) -> list[float]:
  """The sums a ResNet-18 pass (cifar stem) chains on `images` views of size x size.

  Per conv, its 3 x 3 (1 x 1 on the projection shortcut) x input channels products; in
  training, per BatchNorm, the bn_images (default: all) x H x W values of a channel, weighted
  by BN_CONDITION**2; with `head`, the pooling, SupConModel's MLP head and the L2 norm. With
  `backward`, instead, the gradient's: per conv, its input gradient (3 x 3 x output channels
  products) and its weight gradient (images x H x W products), per BatchNorm two sums over
  its values, and the head's.
  """
  channels = [max(1, round(64 * 2**stage * width)) for stage in range(4)]
  layers = [(27, 9 * channels[0], size)]  # (forward products, input-gradient products, side)
  side, previous = size, channels[0]
  for stage, c in enumerate(channels):
    if stage:
      side //= 2
      layers.append((previous, c, side))  # the projection shortcut
    layers += [(9 * previous, 9 * c, side)] + [(9 * c, 9 * c, side)] * 3
    previous = c
  norm = (bn_images or images) * BN_CONDITION**2
  sums = []
  for forward, gradient, s in layers:
    if backward:
      sums += [gradient, images * s * s] + ([2 * norm * s * s] if train_mode else [])
    else:
      sums += [forward] + ([norm * s * s] if train_mode else [])
  if head:  # the pooling over side**2, the MLP's two dense layers, the L2 norm over 128
    sums += ([previous, 128, images, images, 128] if backward
             else [side * side, previous, previous, 128])
  return sums


def trained(update: float, steps: int) -> float:
  """The relative difference of the parameters' displacement after `steps` steps whose
  updates each differ by `update` relative: every step adds its own and at most doubles the
  difference it starts from. That difference reaches its gradient through the curvature H;
  with stable steps (lr * |H| <= 1) a step moves the gradient by at most its own size, so
  the inherited part grows by at most the displacement it rides on. 2**steps - 1 = 7 after
  three steps is generous: the displacement grows with the steps too ((2k r + e) / (k + 1),
  2.3 e after three)."""
  return update * (2**steps - 1)


def assert_moved_alike(got, want, start, rtol, steps):
  """Each float leaf of `got` within `rtol` of the largest displacement of `want`'s leaf from
  `start` (rounding can only enter through the updates: `start` is one state, exactly), plus
  the rounding of each of the `steps` updates to the leaf's float32 (EPS / 2 of its size in
  either run: a kernel that moved by 1e-5 of itself has 1e-3 of that in its last bit); the
  other leaves (steps, counters, labels) equal."""
  leaves = zip(*(jax.tree.leaves(t) for t in (got, want, start)))
  for g, w, s in leaves:
    g, w, s = (np.asarray(x) for x in (g, w, s))
    if not np.issubdtype(w.dtype, np.floating):
      np.testing.assert_array_equal(g, w)
      continue
    moved = np.abs(w.astype(np.float64) - s).max(initial=0.0)
    np.testing.assert_allclose(g - s.astype(np.float64), w - s.astype(np.float64), rtol=0,
                               atol=rtol * moved + steps * EPS * np.abs(w).max(initial=0.0))


def apart(start, params, update, steps) -> float:
  """How far apart (L2) two runs' `params` may be after `steps` steps from `start`: within
  trained(update, steps) of the displacement (in norm as leaf by leaf), plus each step's
  float32 rounding of the parameters themselves."""
  norm = lambda tree: math.sqrt(sum(float(np.sum(np.square(np.asarray(x, np.float64))))
                                    for x in jax.tree.leaves(tree)))
  moved = jax.tree.map(lambda a, b: np.asarray(a, np.float64) - b, params, start)
  return trained(update, steps) * norm(moved) + steps * EPS * norm(params)
