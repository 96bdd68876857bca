"""Tests for supcon_jax.models: shapes, parameter counts against torchvision, BatchNorm modes."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from supcon_jax import methods, models
from supcon_jax.config import base_config
from supcon_jax.models import (
  CEModel,
  LinearClassifier,
  ProjectionHead,
  ResNet,
  SupConModel,
  build_encoder,
  feature_dim,
)
from supcon_jax.models.heads import l2_normalize
from supcon_jax.models.resnet import BottleneckBlock
from tests.rounding import BN_CONDITION, resnet18_sums, rounding

# Written out here, from the ResNet paper's Table 1, rather than read from the code under test.
BLOCKS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3),
          152: (3, 8, 36, 3), 200: (3, 24, 36, 3)}
FULL_WIDTH_DIM = {18: 512, 34: 512, 50: 2048, 101: 2048, 152: 2048, 200: 2048}
EPS = 1e-5
# threefry's init compiles ~5x slower on CPU than rbg; the keys' values do not matter here.
KEY = jax.random.key(0, impl="rbg")


def block_names(depth):
  return [f"stage{s + 1}_block{i + 1}" for s, n in enumerate(BLOCKS[depth]) for i in range(n)]


def n_params(tree) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def abstract_init(model, shape):
  """(output, variables) as shapes only: nothing is computed."""
  return jax.eval_shape(lambda x: model.init_with_output(
      KEY, x, train=False, capture_intermediates=True, mutable=True), jnp.zeros(shape))


def init(model, x):
  return jax.jit(lambda x: model.init(KEY, x, train=False))(x)


def images(n, size, seed=0):
  return jnp.asarray(np.random.default_rng(seed).normal(size=(n, size, size, 3)), jnp.float32)


@functools.cache
def apply_fn(model, train):
  """Jitted apply returning (output, updated batch_stats, intermediates); cached per model."""
  mutable = ["batch_stats", "intermediates"] if train else ["intermediates"]

  @jax.jit
  def run(variables, x):
    out, state = model.apply(variables, x, train=train, mutable=mutable, capture_intermediates=True)
    return out, state.get("batch_stats"), state["intermediates"]
  return run


# cifar stem, 8/16/32/64 channels; zero_init_residual, so that one costly init serves all tests.
SMALL = ResNet(18, width=0.125, zero_init_residual=True)


@pytest.fixture(scope="module")
def small_vars():
  return init(SMALL, images(8, 8))


def test_feature_dim():
  assert [feature_dim(d) for d in BLOCKS] == [FULL_WIDTH_DIM[d] for d in BLOCKS]
  assert feature_dim(18, 0.125) == 64
  assert feature_dim(50, 0.5) == 1024
  assert feature_dim(50, 0.001) == 4  # one channel at least, times the bottleneck expansion


@pytest.mark.parametrize("stem,last_hw", [("cifar", 8), ("imagenet", 2)])
@pytest.mark.parametrize("depth", list(BLOCKS))
def test_shapes_every_depth(depth, stem, last_hw):
  r, v = abstract_init(ResNet(depth, width=0.5, stem=stem), (2, 64, 64, 3))
  assert r.shape == (2, FULL_WIDTH_DIM[depth] // 2) and r.dtype == jnp.float32
  assert sorted(k for k in v["params"] if "block" in k) == sorted(block_names(depth))
  last = v["intermediates"][block_names(depth)[-1]]["__call__"][0]
  # cifar stem keeps 64x64, then /8; imagenet stem /4, then /8.
  assert last.shape == (2, last_hw, last_hw, FULL_WIDTH_DIM[depth] // 2)
  assert {x.dtype for x in jax.tree.leaves(v["params"])} == {jnp.dtype(jnp.float32)}
  if depth >= 50:  # v1.5: the stride is in the 3x3 conv, the 1x1 before it keeps the size
    first = v["intermediates"]["stage2_block1"]
    assert first["conv1"]["__call__"][0].shape[1] == 2 * first["conv2"]["__call__"][0].shape[1]


def test_param_counts_match_torchvision():
  _, v50 = abstract_init(ResNet(50, stem="imagenet"), (1, 32, 32, 3))
  assert n_params(v50["params"]) == 23_508_032  # torchvision resnet50 without fc
  _, v18 = abstract_init(ResNet(18, stem="imagenet"), (1, 32, 32, 3))
  assert n_params(v18["params"]) == 11_689_512 - 513_000  # resnet18 minus fc
  _, v18c = abstract_init(ResNet(18, stem="cifar"), (1, 32, 32, 3))
  assert n_params(v18c["params"]) == 11_176_512 - 7 * 7 * 3 * 64 + 3 * 3 * 3 * 64
  # Running statistics are state, not parameters: mean and var per BN channel.
  assert n_params(v50["batch_stats"]) == 2 * n_params(
      [bn["scale"] for bn in _bn_params(v50["params"])])
  assert not any("bias" in p for p in _conv_params(v50["params"]))


def _bn_params(params):
  return [v for path, v in _flatten(params) if path[-1].startswith(("bn", "stem_bn", "proj_bn"))]


def _conv_params(params):
  return [v for path, v in _flatten(params) if "conv" in path[-1]]


def _flatten(tree, path=()):
  """(path, dict) for every dict whose values are arrays, i.e. every layer's parameters."""
  if all(not isinstance(v, dict) for v in tree.values()):
    return [(path, tree)]
  return [item for k, v in tree.items() for item in _flatten(v, path + (k,))]


def test_conv_init_is_kaiming_normal_fan_out(small_vars):
  params = small_vars["params"]
  w = np.asarray(params["stage4_block1"]["conv1"]["kernel"])
  assert w.shape == (3, 3, 32, 64)
  std = np.sqrt(2.0 / (3 * 3 * 64))  # fan_out = kernel area * output channels (fan_in is half)
  assert abs(w.std() / std - 1) < 0.04 and abs(w.mean()) < 0.04 * std
  assert np.abs(w).max() > 3.3 * std  # an untruncated normal (18k samples reach ~4 sigma)
  for bn in _bn_params(params):
    np.testing.assert_array_equal(bn["bias"], 0.0)


def test_zero_init_residual_resnet18(small_vars):
  params = small_vars["params"]
  for name in block_names(18):
    np.testing.assert_array_equal(params[name]["bn2"]["scale"], 0.0)
    np.testing.assert_array_equal(params[name]["bn1"]["scale"], 1.0)
  np.testing.assert_array_equal(params["stem_bn"]["scale"], 1.0)
  np.testing.assert_array_equal(params["stage2_block1"]["proj_bn"]["scale"], 1.0)


def test_zero_init_residual_bottleneck_is_identity_then_relu():
  block = BottleneckBlock(channels=4, zero_init_residual=True)
  x = images(2, 8)[..., :1] * jnp.ones(16)  # 16 = 4 * 4 channels: identity shortcut
  variables = jax.jit(lambda x: block.init(KEY, x, train=False))(x)
  np.testing.assert_array_equal(variables["params"]["bn3"]["scale"], 0.0)
  for bn in ("bn1", "bn2"):
    np.testing.assert_array_equal(variables["params"][bn]["scale"], 1.0)
  y = block.apply(variables, x, train=False)
  np.testing.assert_allclose(y, np.maximum(np.asarray(x), 0.0), atol=1e-6)


def test_batchnorm_eval_uses_running_stats(small_vars):
  rng = np.random.default_rng(1)
  variables = jax.tree.map(lambda a: a, small_vars)  # a copy to modify
  c = 8
  mean, var = rng.normal(size=c), rng.uniform(0.5, 2.0, size=c)
  scale, bias = rng.normal(size=c), rng.normal(size=c)
  variables["batch_stats"]["stem_bn"] = {"mean": jnp.float32(mean), "var": jnp.float32(var)}
  variables["params"]["stem_bn"] = {"scale": jnp.float32(scale), "bias": jnp.float32(bias)}
  x = images(8, 8)
  r, _, inter = apply_fn(SMALL, False)(variables, x)
  conv = np.asarray(inter["stem_conv"]["__call__"][0], np.float64)
  expected = (conv - mean) / np.sqrt(var + EPS) * scale + bias
  np.testing.assert_allclose(inter["stem_bn"]["__call__"][0], expected, rtol=1e-4, atol=1e-4)
  # One example's output does not depend on the rest of the batch.
  r2, _, _ = apply_fn(SMALL, False)(variables, x.at[1:].set(images(7, 8, seed=5)))
  np.testing.assert_allclose(r2[0], r[0], rtol=1e-5, atol=1e-6)


def test_batchnorm_train_uses_batch_stats_and_updates_running(small_vars):
  x = images(8, 8)
  r, stats, inter = apply_fn(SMALL, True)(small_vars, x)
  conv = np.asarray(inter["stem_conv"]["__call__"][0], np.float64)
  mu, var = conv.mean(axis=(0, 1, 2)), conv.var(axis=(0, 1, 2))
  expected = (conv - mu) / np.sqrt(var + EPS)  # scale 1, bias 0 at init
  np.testing.assert_allclose(inter["stem_bn"]["__call__"][0], expected, rtol=1e-3, atol=1e-3)
  # momentum 0.9 on the old value (init mean 0, var 1); the batch variance is the biased one.
  np.testing.assert_allclose(stats["stem_bn"]["mean"], 0.1 * mu, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(stats["stem_bn"]["var"], 0.9 + 0.1 * var, rtol=1e-4)
  assert jax.tree.structure(stats) == jax.tree.structure(small_vars["batch_stats"])
  # Batch statistics couple the examples: changing the others changes example 0's output.
  r2, _, _ = apply_fn(SMALL, True)(small_vars, x.at[1:].set(images(7, 8, seed=5)))
  assert np.abs(np.asarray(r2[0]) - np.asarray(r[0])).max() > 1e-3


def test_batchnorm_is_global_under_sharded_jit(small_vars):
  mesh = jax.make_mesh((8,), ("data",))
  x = images(8, 8)
  x_sharded = jax.device_put(x, jax.sharding.NamedSharding(mesh, jax.P("data")))
  r, stats, _ = apply_fn(SMALL, True)(small_vars, x)
  r_s, stats_s, _ = apply_fn(SMALL, True)(small_vars, x_sharded)
  assert len(x_sharded.sharding.device_set) == 8  # one example per device
  # The sharded pass sums BN's statistics as 8 partial sums and may order any sum otherwise:
  # r, of unit scale, differs by the encoder's rounding (test_train's docstring) of its
  # largest value. A forward pass only: ReLU's kink moves no value, only gradients.
  encoder = resnet18_sums(0.125, 8, 8, head=False)
  np.testing.assert_allclose(r_s, r, rtol=0, atol=rounding(encoder) * np.abs(r).max())
  # The running variance is 0.9 + 0.1 var: only 0.1 var carries the rounding of the stem's
  # 27-product conv and of BN's sums over 8 x 8 x 8 values.
  var = np.asarray(stats["stem_bn"]["var"], np.float64)
  np.testing.assert_allclose(stats_s["stem_bn"]["var"], var, rtol=0,
                             atol=rounding([27, 8 * 8 * 8 * BN_CONDITION**2]) * (var - 0.9).max())


def test_bfloat16_compute_float32_params_and_outputs():
  model = SupConModel(18, width=0.125, dtype=jnp.bfloat16)
  x = images(4, 8)
  variables = init(model, x)
  assert {a.dtype for a in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
  for bn in _bn_params(variables["params"]["encoder"]):  # no zero_init_residual here
    np.testing.assert_array_equal(bn["scale"], 1.0)
  out, _, inter = apply_fn(model, False)(variables, x)
  enc = inter["encoder"]
  assert enc["stem_conv"]["__call__"][0].dtype == jnp.bfloat16
  assert all(enc[b]["__call__"][0].dtype == jnp.bfloat16 for b in block_names(18))
  assert out["repr"].dtype == jnp.float32 and out["repr"].shape == (4, 64)
  assert out["proj"].dtype == jnp.float32 and out["proj"].shape == (4, 128)
  np.testing.assert_allclose(np.linalg.norm(out["proj"], axis=-1), 1.0, rtol=1e-5)


def test_l2_normalize():
  z = np.random.default_rng(2).normal(size=(5, 7))
  expected = z / np.maximum(np.linalg.norm(z, axis=-1, keepdims=True), 1e-12)
  np.testing.assert_allclose(l2_normalize(jnp.bfloat16(z)), expected, rtol=1e-2, atol=1e-2)
  np.testing.assert_allclose(l2_normalize(jnp.float32(z)), expected, rtol=1e-5)
  assert l2_normalize(jnp.bfloat16(z)).dtype == jnp.float32
  tiny = z[:1] * 1e-9 / np.linalg.norm(z[0])  # norm 1e-9, above the 1e-12 floor: still unit
  np.testing.assert_allclose(l2_normalize(jnp.float32(tiny)), expected[:1], rtol=1e-5)
  zero = jnp.zeros((2, 3))
  np.testing.assert_array_equal(l2_normalize(zero), 0.0)
  grad = jax.grad(lambda z: l2_normalize(z).sum())(zero)
  assert np.isfinite(grad).all()


@pytest.mark.parametrize("head,shapes", [
    ("mlp", {"hidden": {"kernel": (64, 64), "bias": (64,)}, "out": {"kernel": (64, 32),
                                                                  "bias": (32,)}}),
    ("linear", {"out": {"kernel": (64, 32), "bias": (32,)}}),
])
def test_projection_head_shapes(head, shapes):
  out, v = abstract_init(SupConModel(18, width=0.125, head=head, proj_dim=32), (2, 8, 8, 3))
  assert jax.tree.map(lambda a: a.shape, v["params"]["head"]) == shapes
  assert out["proj"].shape == (2, 32) and out["repr"].shape == (2, 64)


def test_mlp_head_matches_numpy():
  r = np.random.default_rng(4).normal(size=(6, 5))
  head = ProjectionHead("mlp", hidden_dim=9, out_dim=3)
  variables = head.init(KEY, jnp.float32(r))
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), variables["params"])
  p["hidden"]["bias"] = np.random.default_rng(5).normal(size=9)  # init biases are zero
  h = np.maximum(r @ p["hidden"]["kernel"] + p["hidden"]["bias"], 0.0)
  z = h @ p["out"]["kernel"] + p["out"]["bias"]
  expected = z / np.linalg.norm(z, axis=-1, keepdims=True)
  z_model = head.apply({"params": jax.tree.map(jnp.float32, p)}, jnp.float32(r))
  np.testing.assert_allclose(z_model, expected, rtol=1e-4, atol=1e-5)


def test_encoder_variables_identical_in_every_model():
  shape = (2, 16, 16, 3)
  shapes = lambda tree: jax.tree.map(lambda a: (a.shape, a.dtype), tree)
  _, enc = abstract_init(ResNet(18, width=0.25), shape)
  _, sup = abstract_init(SupConModel(18, width=0.25), shape)
  ce_out, ce = abstract_init(CEModel(18, num_classes=7, width=0.25, dtype=jnp.bfloat16), shape)
  for col in ("params", "batch_stats"):
    assert shapes(sup[col]["encoder"]) == shapes(enc[col])
    assert shapes(ce[col]["encoder"]) == shapes(enc[col])
  assert set(sup["params"]) == {"encoder", "head"}
  assert set(ce["params"]) == {"encoder", "classifier"}
  assert shapes(ce["params"]["classifier"]) == {"dense": {"kernel": ((128, 7), jnp.float32),
                                                          "bias": ((7,), jnp.float32)}}
  assert ce_out["logits"].shape == (2, 7) and ce_out["logits"].dtype == jnp.float32
  assert ce_out["repr"].dtype == jnp.float32


def test_linear_classifier():
  r = jnp.bfloat16(np.random.default_rng(3).normal(size=(4, 6)))
  clf = LinearClassifier(num_classes=3)
  variables = clf.init(KEY, r)
  logits = clf.apply(variables, r)
  w, b = variables["params"]["dense"]["kernel"], variables["params"]["dense"]["bias"]
  expected = np.asarray(r, np.float64) @ np.asarray(w, np.float64) + np.asarray(b, np.float64)
  assert logits.dtype == jnp.float32
  np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)


def test_each_method_builds_its_model_from_config():
  config = base_config()
  cfg = config.model
  cfg.depth, cfg.width, cfg.stem, cfg.head, cfg.proj_dim = 50, 0.5, "imagenet", "linear", 64
  cfg.zero_init_residual, cfg.dtype = True, "bfloat16"
  for method in ("supcon", "simclr"):
    model = methods.get(method).build_model(config, 10)
    assert model == SupConModel(50, 0.5, "imagenet", True, jnp.bfloat16, "linear", 64)
  assert methods.get("ce").build_model(config, 10) == CEModel(50, 10, 0.5, "imagenet", True,
                                                              jnp.bfloat16)
  config.probe.update(enabled=True, stop_gradient=False)  # a probe for contrastive methods
  assert methods.get("supcon").build_model(config, 10) == SupConModel(
      50, 0.5, "imagenet", True, jnp.bfloat16, "linear", 64, probe_classes=10,
      probe_stop_gradient=False)
  assert methods.get("ce").build_model(config, 10) == CEModel(50, 10, 0.5, "imagenet", True,
                                                              jnp.bfloat16)
  assert build_encoder(cfg) == ResNet(50, 0.5, "imagenet", True, jnp.bfloat16)
  cfg.dtype = "float32"
  assert build_encoder(cfg).dtype == jnp.float32


@pytest.mark.parametrize("stop_gradient", [True, False])
def test_the_probe_reaches_the_encoder_only_without_its_stop_gradient(stop_gradient):
  model = SupConModel(18, 0.0625, probe_classes=3, probe_stop_gradient=stop_gradient)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 8, 8, 3)), jnp.float32)
  variables = model.init(jax.random.key(0), x, train=False)
  logits = lambda p: model.apply({**variables, "params": p}, x, train=False)["logits"].sum()
  grads = jax.grad(logits)(variables["params"])
  encoder_moves = any(np.abs(g).max() > 0 for g in jax.tree.leaves(grads["encoder"]))
  assert encoder_moves == (not stop_gradient)
  assert np.abs(grads["probe"]["dense"]["kernel"]).max() > 0  # the probe itself always learns


@pytest.mark.parametrize("field,value,culprit", [
    ("method", "byol", "byol"), ("head", "conv", "conv"), ("dtype", "float16", "float16"),
    ("depth", 42, "42"), ("stem", "tiny", "tiny"), ("width", 0.0, "width"),
])
def test_build_model_rejects_bad_config(field, value, culprit):
  config = base_config()
  method = "supcon"
  if field == "method":
    method = value
  else:
    config.model[field] = value
  with pytest.raises(ValueError, match=culprit):
    methods.get(method).build_model(config, 10)


def test_resnet_rejects_bad_depth_and_stem():
  with pytest.raises(ValueError, match=r"depth=42 is not one of 18, 34, 50, 101, 152, 200"):
    ResNet(42)
  with pytest.raises(ValueError, match=r"'tiny'.*cifar.*imagenet"):
    ResNet(18, stem="tiny")
  with pytest.raises(ValueError, match="42"):
    feature_dim(42)


@pytest.mark.parametrize("stem,too_small,smallest", [("cifar", 4, 8), ("imagenet", 16, 32)])
def test_resnet_rejects_too_small_images(stem, too_small, smallest):
  model = ResNet(18, width=0.125, stem=stem)
  with pytest.raises(ValueError, match=f"{too_small}x{too_small}.*{stem}"):
    abstract_init(model, (1, too_small, too_small, 3))
  with pytest.raises(ValueError, match=f"{too_small}x{smallest}"):
    abstract_init(model, (1, too_small, smallest, 3))
  with pytest.raises(ValueError, match=f"{smallest}x{too_small}"):
    abstract_init(model, (1, smallest, too_small, 3))
  r, _ = abstract_init(model, (1, smallest, smallest, 3))
  assert r.shape == (1, 64)
  with pytest.raises(ValueError, match="N, H, W, C"):
    abstract_init(model, (smallest, smallest, 3))


def test_forward_macs_count_resnet18_layer_by_layer():
  # Width 1/64: 1, 2, 4, 8 channels in stages 1-4 at 8, 4, 2, 1 pixels a side.
  got = models.forward_macs(18, 1 / 64, "cifar", 8) + models.head_macs("linear", 8, 2)
  conv = lambda side, k, c_in, c_out: side * side * k * k * c_in * c_out
  expected = conv(8, 3, 3, 1) + 4 * conv(8, 3, 1, 1)  # stem, stage 1
  for c, side in ((2, 4), (4, 2), (8, 1)):
    first = conv(side, 3, c // 2, c) + conv(side, 3, c, c) + conv(side, 1, c // 2, c)
    expected += first + 2 * conv(side, 3, c, c)
  expected += 8 * 2  # linear head
  assert got == expected
  assert models.head_macs("mlp", 8, 2) == 8 * 8 + 8 * 2


# XLA counts 2 FLOPs per multiply-accumulate of the convs it runs (taps inside the image only)
# plus the elementwise work (BatchNorm, ReLU, residual adds, pooling): above the analytic
# count by less than `extra` at full width. A missing layer (ResNet-18's three projection
# shortcuts are 1.3% of its MACs) or a double-counted one falls outside.
@pytest.mark.parametrize("depth,stem,size,extra", [(18, "cifar", 32, 0.005),
                                                   (18, "imagenet", 64, 0.007),
                                                   (50, "cifar", 16, 0.02),
                                                   (50, "imagenet", 64, 0.02)])
def test_forward_macs_against_xla_cost_analysis(depth, stem, size, extra):
  model = ResNet(depth, stem=stem)
  variables = jax.eval_shape(lambda: model.init(KEY, jnp.zeros((1, size, size, 3)), train=False))
  fn = jax.jit(lambda v, x: model.apply(v, x, train=False))
  cost = fn.lower(variables, jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)).compile()
  cost = cost.cost_analysis()
  xla_flops = (cost[0] if isinstance(cost, list) else cost)["flops"] / 2  # per image
  analytic = 2 * models.forward_macs(depth, 1.0, stem, size, count_padding=False)
  assert 0 <= xla_flops / analytic - 1 < extra
  # Counting the padding's taps too (the convention of the reference figures) adds to it.
  assert models.forward_macs(depth, 1.0, stem, size) > analytic / 2
