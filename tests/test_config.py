"""Every allowed value, taken from the one list that owns it, passes validation and builds.

The lists live in the modules that implement them (methods.METHODS, models.DEPTHS,
augment.POLICIES, optim.OPTIMIZERS, experiment.STAGES, ...); validation reads the same lists.
A value that validation accepts but construction rejects (or the reverse) fails here.
"""

import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from supcon_jax import (
  augment,
  data,
  experiment,
  linear_probe,
  losses,
  methods,
  models,
  optim,
  sharding,
  validation,
)
from supcon_jax import config as config_lib


def _config(**fields):
  c = config_lib.base_config()
  c.model.width = 0.0625
  for dotted, value in fields.items():
    section, _, name = dotted.rpartition(".")
    setattr(c.get(section) if section else c, name, value)
  experiment.validate(c)
  return c


def _images(size=8, batch=8):
  return np.random.default_rng(0).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)


@pytest.mark.parametrize("name", methods.METHODS)
def test_every_method_builds_its_model_and_loss(name):
  c = _config(method=name, **{"augment.policy": "none"})
  method = methods.get(name)
  model = method.build_model(c, c.data.num_classes)
  mesh = sharding.make_mesh(1)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)),
                                                train=False))
  batch = {"image": jnp.asarray(_images()), "label": jnp.arange(8) % 2}
  loss, _ = jax.eval_shape(method.loss_fn(c, model, mesh), variables["params"],
                           variables["batch_stats"], batch, jax.random.key(1))
  assert loss.shape == ()
  assert method.evaluation in (methods.LINEAR, methods.CLASSIFIER)


@pytest.mark.parametrize("stage", experiment.STAGES)
def test_every_stage_validates_and_has_its_function(stage):
  _config(stage=stage)
  assert callable(experiment.STAGES[stage])


@pytest.mark.parametrize("depth", models.DEPTHS)
@pytest.mark.parametrize("stem", models.STEMS)
def test_every_depth_and_stem_builds(depth, stem):
  size = models.resnet.MIN_IMAGE_SIZE[stem]
  c = _config(**{"model.depth": depth, "model.stem": stem, "data.image_size": size})
  r = jax.eval_shape(lambda: models.build_encoder(c.model).init_with_output(
      jax.random.key(0), jnp.zeros((1, size, size, 3)), train=False)[0])
  assert r.shape == (1, models.feature_dim(depth, c.model.width))


@pytest.mark.parametrize("head", models.HEADS)
@pytest.mark.parametrize("dtype", models.DTYPES)
def test_every_head_and_dtype_builds(head, dtype):
  c = _config(**{"model.head": head, "model.dtype": dtype})
  model = methods.get("supcon").build_model(c, 10)
  out = jax.eval_shape(lambda: model.init_with_output(jax.random.key(0), jnp.zeros((1, 8, 8, 3)),
                                                      train=False)[0])
  assert out["proj"].shape == (1, c.model.proj_dim) and out["proj"].dtype == jnp.float32


@pytest.mark.parametrize("policy", augment.POLICIES)
def test_every_policy_builds(policy):
  c = _config(**{"augment.policy": policy})
  views = jax.eval_shape(augment.from_config(c), jax.random.key(0), jnp.asarray(_images()))
  assert views.shape == (8, c.augment.n_views, 8, 8, 3)


@pytest.mark.parametrize("policy", linear_probe.POLICIES)
def test_every_linear_policy_builds(policy):
  c = _config(**{"linear.augment": policy})
  views = jax.eval_shape(augment.from_config(c, policy=policy, n_views=1), jax.random.key(0),
                         jnp.asarray(_images()))
  assert views.shape == (8, 1, 8, 8, 3)


@pytest.mark.parametrize("name", optim.OPTIMIZERS)
def test_every_optimizer_builds_for_both_stages(name):
  c = _config(**{"optim.name": name, "linear.optim.name": name})
  for block in (c.optim, c.linear.optim):
    tx, _ = optim.make_optimizer(block, batch_size=8, steps_per_epoch=1, total_steps=2)
    params = {"kernel": jnp.ones((2, 2))}
    updates, _ = tx.update(params, tx.init(params), params)
    assert np.isfinite(np.asarray(updates["kernel"])).all()


@pytest.mark.parametrize("variant", losses.VARIANTS)
@pytest.mark.parametrize("mode", losses.CONTRAST_MODES)
def test_every_loss_variant_and_contrast_mode_computes(variant, mode):
  c = _config(**{"loss.variant": variant, "loss.contrast_mode": mode})
  z = jnp.asarray(np.random.default_rng(0).normal(size=(4, 2, 3)), jnp.float32)
  z /= jnp.linalg.norm(z, axis=-1, keepdims=True)
  loss = losses.supcon_loss(z, jnp.array([0, 0, 1, 1]), variant=c.loss.variant,
                            contrast_mode=c.loss.contrast_mode)
  assert np.isfinite(float(loss)) and float(loss) > 0


@pytest.mark.parametrize("source", data.SOURCES)
@pytest.mark.parametrize("bad_images", data.BAD_IMAGES)
def test_every_source_and_bad_image_choice_validates(source, bad_images):
  _config(**{"data.source": source, "data.train_dir": "/x", "data.bad_images": bad_images})


@pytest.mark.parametrize("field,value", [
    ("method", "byol"), ("stage", "finetuning"), ("data.source", "hdf5"),
    ("data.bad_images", "ignore"), ("augment.policy", "mixup"), ("linear.augment", "simaugment"),
    ("model.depth", 19), ("model.stem", "tiny"), ("model.head", "conv"),
    # float16 was accepted by validation and refused at model building: the lists disagreed.
    ("model.dtype", "float16"), ("loss.variant", "both"), ("loss.contrast_mode", "two"),
    ("optim.name", "adam"), ("linear.optim.name", "adam"),
    ("robustness.baseline_method", "byol"),
])
def test_values_outside_the_lists_fail_validation_naming_the_field(field, value):
  with pytest.raises(ValueError, match=re.escape(f"config.{field}={value!r}")):
    _config(**{field: value})


RECIPES = [("cifar10.py", ""), ("cifar10.py", "simclr"), ("cifar10.py", "ce"), ("cifar100.py", ""),
           ("cifar10_fast.py", ""), ("cifar10_fast.py", "ce"), ("cifar10_fast.py", "simclr"),
           ("digits.py", ""), ("imagenet.py", ""), ("imagenet_ce.py", ""),
           ("imagenet_moco.py", ""), ("imagenet100.py", ""),
           ("transfer.py", "food101")]  # each of its datasets: test_transfer_suite.py


def test_every_recipe_is_listed_here():
  import pathlib
  files = {p.name for p in (pathlib.Path(__file__).parents[1] / "configs").glob("*.py")}
  assert files == {name for name, _ in RECIPES}


@pytest.mark.parametrize("name,arg", RECIPES)
def test_every_recipe_validates(name, arg):
  import pathlib
  path = pathlib.Path(__file__).parents[1] / "configs" / name
  experiment.validate(config_lib.load_config_file(str(path), arg))


_WITHOUT_JAX = """
import sys

# As if not installed: importing any of them raises ImportError.
for name in ("jax", "jaxlib", "flax", "optax", "orbax", "orbax.checkpoint", "clu"):
  sys.modules[name] = None
from supcon_jax import config as config_lib
config = config_lib.load_config_file(sys.argv[1], sys.argv[2])
print(config.method, config.batch_size)
"""


@pytest.mark.parametrize("name,arg", [("imagenet_moco.py", ""), ("cifar10_fast.py", "ce"),
                                      ("cifar100.py", "")])
def test_a_recipe_loads_without_jax(name, arg):
  import pathlib
  path = pathlib.Path(__file__).parents[1] / "configs" / name
  result = subprocess.run([sys.executable, "-c", _WITHOUT_JAX, str(path), arg],
                          capture_output=True, text=True, timeout=120, check=False)
  assert result.returncode == 0, result.stderr[-2000:]
  expected = config_lib.load_config_file(str(path), arg)
  assert result.stdout.split() == [expected.method, str(expected.batch_size)]


def test_a_misspelt_field_is_an_error_naming_the_closest():
  c = config_lib.base_config()
  c.batch_sise = 3  # a recipe file can add fields: nothing would read this one
  with pytest.raises(ValueError, match=re.escape("config.batch_sise is not a config field "
                                                 "(did you mean batch_size?)")):
    experiment.validate(c)
  c = config_lib.base_config()
  c.linear.epoch = 3.0
  with pytest.raises(ValueError, match=re.escape("config.linear.epoch is not a config field "
                                                 "(did you mean linear.epochs?)")):
    experiment.validate(c)


@pytest.mark.parametrize("fields,message", [
    ({"linear.epochs": 0.0}, "config.linear.epochs=0.0 must be > 0"),
    ({"knn.k": 0}, "config.knn.k=0 must be > 0"),
    ({"knn.k": 300, "knn.num_train": 256}, "config.knn.k=300 is more than the "
                                           "config.knn.num_train=256"),
    ({"data.num_classes": 1}, "config.data.num_classes=1: a classifier needs at least 2"),
])
def test_values_that_ran_silently_are_errors(fields, message):
  with pytest.raises(ValueError, match=re.escape(message)):
    _config(**fields)


@pytest.mark.parametrize("fields,checked,message", [
    ({"batch_size": 400}, ("batch_size",),
     "config.batch_size=400 is more than the 297 training images, so an epoch has no full "
     "batch; set config.batch_size to at most 297"),
    ({"linear.batch_size": 512}, ("linear.batch_size",),
     "config.linear.batch_size=512 is more than the 297 training images"),
    ({"knn.k": 400}, ("knn.k",), "config.knn.k=400 is more than the 297 training images of "
                                 "the kNN memory bank; set config.knn.k to at most 297"),
])
def test_batches_and_k_larger_than_the_training_split_are_errors(fields, checked, message):
  c = _config(**fields)
  validation.check_dataset(c, 297, ())  # only what the stage reads is checked
  with pytest.raises(ValueError, match=re.escape(message)):
    validation.check_dataset(c, 297, checked)
  validation.check_dataset(c, 1000, checked)
