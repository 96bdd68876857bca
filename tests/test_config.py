"""Every allowed value, taken from the one list that owns it, passes validation and builds.

The lists live in the modules that implement them (methods.METHODS, models.DEPTHS,
augment.POLICIES, optim.OPTIMIZERS, ...); config.validate reads the same lists. A value that
validation accepts but construction rejects (or the reverse) fails here.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from supcon_jax import augment, config as config_lib, data, evaluate, losses, methods, models
from supcon_jax import optim, sharding


def _config(**fields):
  c = config_lib.base_config()
  c.model.width = 0.0625
  for dotted, value in fields.items():
    section, _, name = dotted.rpartition(".")
    setattr(c.get(section) if section else c, name, value)
  config_lib.validate(c)
  return c


def _images(size=8, batch=8):
  return np.random.default_rng(0).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)


@pytest.mark.parametrize("name", methods.METHODS)
def test_every_method_builds_its_model_and_loss(name):
  c = _config(method=name, **{"augment.policy": "none"})
  method = methods.get(name)
  model = method.build_model(c.model, c.data.num_classes)
  mesh = sharding.make_mesh(1)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)),
                                                train=False))
  batch = {"image": jnp.asarray(_images()), "label": jnp.arange(8) % 2}
  loss, _ = jax.eval_shape(method.loss_fn(c, model, mesh), variables["params"],
                           variables["batch_stats"], batch, jax.random.key(1))
  assert loss.shape == () and set(method.stages) <= set(methods.STAGES)
  assert method.evaluation in (methods.LINEAR, methods.CLASSIFIER)
  for stage in methods.STAGES:
    _config(method=name, stage=stage)


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
  model = methods.get("supcon").build_model(c.model, 10)
  out = jax.eval_shape(lambda: model.init_with_output(jax.random.key(0), jnp.zeros((1, 8, 8, 3)),
                                                      train=False)[0])
  assert out["proj"].shape == (1, c.model.proj_dim) and out["proj"].dtype == jnp.float32


@pytest.mark.parametrize("policy", augment.POLICIES)
def test_every_policy_builds(policy):
  c = _config(**{"augment.policy": policy})
  views = jax.eval_shape(augment.from_config(c), jax.random.key(0), jnp.asarray(_images()))
  assert views.shape == (8, c.augment.n_views, 8, 8, 3)


@pytest.mark.parametrize("policy", evaluate.LINEAR_POLICIES)
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
    ("method", "byol"), ("stage", "finetune"), ("data.source", "hdf5"),
    ("data.bad_images", "ignore"), ("augment.policy", "mixup"), ("linear.augment", "simaugment"),
    ("model.depth", 19), ("model.stem", "tiny"), ("model.head", "conv"),
    # float16 was accepted by validation and refused at model building: the lists disagreed.
    ("model.dtype", "float16"), ("loss.variant", "both"), ("loss.contrast_mode", "two"),
    ("optim.name", "adam"), ("linear.optim.name", "adam"),
])
def test_values_outside_the_lists_fail_validation_naming_the_field(field, value):
  with pytest.raises(ValueError, match=re.escape(f"config.{field}={value!r}")):
    _config(**{field: value})


RECIPES = [("cifar10.py", ""), ("cifar10.py", "simclr"), ("cifar10.py", "ce"), ("cifar100.py", ""),
           ("cifar10_fast.py", ""), ("cifar10_fast.py", "ce"), ("cifar10_fast.py", "simclr"),
           ("digits.py", ""), ("imagenet.py", ""), ("imagenet_ce.py", ""),
           ("imagenet_moco.py", "")]


def test_every_recipe_is_listed_here():
  import pathlib
  files = {p.name for p in (pathlib.Path(__file__).parents[1] / "configs").glob("*.py")}
  assert files == {name for name, _ in RECIPES}


@pytest.mark.parametrize("name,arg", RECIPES)
def test_every_recipe_validates(name, arg):
  import pathlib
  path = pathlib.Path(__file__).parents[1] / "configs" / name
  config_lib.validate(config_lib.load_config_file(str(path), arg))
