"""How the pieces are wired: what each stage's encoder receives, and what its loss is given.

The units (augmentation ops, the loss, the sources) have their own tests; these look at the
seams between them, with a stand-in encoder that hands every batch it receives to the host
and embeds an image by its own pixels, so what reaches the loss is known exactly.
"""

import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from supcon_jax import checkpoint, data, experiment, finetune, linear_probe, methods, sharding
from supcon_jax import config as config_lib
from tests.test_loss_options import ref_options

MEAN, STD = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)


def _recorder(seen: list | None, *, by_mean: bool = False) -> nn.Module:
  """An encoder that appends every input batch to `seen` (unless None) and returns r = the
  mean pixel and z = the normalised pixels (`by_mean`: the normalised mean pixel, the same
  for views of any size and for a flipped view)."""

  class Recorder(nn.Module):
    @nn.compact
    def __call__(self, x, train):
      if seen is not None:
        jax.debug.callback(lambda a: seen.append(np.asarray(a)), x)
      flat = x.mean((1, 2)) if by_mean else x.reshape(x.shape[0], -1)
      return {"repr": x.mean((1, 2)),
              "proj": flat / jnp.linalg.norm(flat, axis=1, keepdims=True)}

  return Recorder()


def _config(method="supcon", *, host_cropped=False, policy="cropflip"):
  c = config_lib.base_config()
  c.method = method
  c.data.mean, c.data.std = MEAN, STD
  c.data.host_resize = host_cropped  # streamed (in_memory=False): cropped while decoding
  c.augment.policy = policy
  c.augment.crop_scale = (0.08, 1.0)
  c.batch_size = 8
  return c


def _normalised(images):
  """The encoder's input for uint8 `images`, from the definition: (x / 255 - mean) / std."""
  return (np.asarray(images, np.float64) / 255.0 - MEAN) / STD


def _flipped_or_not(seen, images):
  """For each row: 0 if the encoder received the image as it is, 1 if mirrored, -1 if neither
  (cropped)."""
  want = _normalised(images)
  kind = np.full(len(images), -1)
  for i, (got, x) in enumerate(zip(seen, want)):
    for k, candidate in enumerate((x, x[:, ::-1])):
      if np.allclose(got, candidate, atol=1e-5):
        kind[i] = k
  return kind


def _pretraining_inputs(config, images, labels):
  """What the encoder receives in one pre-training loss evaluation on `images`."""
  mesh = sharding.make_mesh(1)  # the callback then sees the whole batch at once
  seen = []
  loss_fn = methods.get(config.method).loss_fn(config, _recorder(seen), mesh)
  batch = sharding.to_global({"image": images, "label": labels}, mesh)
  jax.jit(loss_fn)({}, {}, batch, jax.random.key(0))
  jax.effects_barrier()
  assert len(seen) == 1
  return seen[0]


def test_pretraining_on_host_crops_only_flips_each_view():
  # A streamed source of mixed sizes crops every view while decoding: [B, V, H, W, C]. The
  # device must take each view as it is (flipped or not), never crop it again.
  r = np.random.default_rng(0)
  views = r.integers(0, 256, (8, 2, 8, 8, 3), dtype=np.uint8)
  labels = np.arange(8, dtype=np.int32) % 4
  seen = _pretraining_inputs(_config(host_cropped=True), views, labels)
  kind = _flipped_or_not(seen, views.reshape(16, 8, 8, 3))  # view v of image b: row 2b + v
  assert (kind >= 0).all(), kind  # -1: cropped again
  assert 0 < kind.sum() < 16, kind  # both flipped and unflipped views: the flip is kept


def test_pretraining_on_whole_images_crops_each_view_on_the_device():
  r = np.random.default_rng(1)
  images = r.integers(0, 256, (8, 8, 8, 3), dtype=np.uint8)
  labels = np.arange(8, dtype=np.int32) % 4
  seen = _pretraining_inputs(_config(host_cropped=False), images, labels)
  assert (_flipped_or_not(seen, np.repeat(images, 2, axis=0)) == -1).all()


class _Source:
  """A training source of the same batch at every step."""

  def __init__(self, images, labels, mesh):
    self.batch = sharding.to_global({"image": images, "label": labels}, mesh)
    self.steps_per_epoch = 2

  def train_batches(self, start_step=0):
    while True:
      yield self.batch


def _linear_inputs(config, images, tmp_path):
  """Every batch the frozen encoder receives while the linear stage trains on `images`."""
  mesh = sharding.make_mesh(1)
  seen = []
  model = types.SimpleNamespace(model=_recorder(seen), variables={"params": {}},
                                checkpoint=checkpoint.CheckpointRef(str(tmp_path / "ckpt"), 1))
  labels = np.arange(len(images), dtype=np.int32) % 4
  eval_out = {"repr": np.zeros((4, 3), np.float32), "label": np.arange(4)}
  config.data.num_classes = 4
  config.linear.epochs = 1.0  # two steps
  config.linear.batch_size = len(images)
  linear_probe.train_classifier(config, model, _Source(images, labels, mesh), eval_out,
                                mesh=mesh, workdir=str(tmp_path))
  jax.effects_barrier()
  assert len(seen) == 2
  return seen


def test_linear_stage_on_host_crops_only_flips_them(tmp_path):
  # data.host_resize, streamed: the linear stage's source crops one view per image on the host.
  images = np.random.default_rng(2).integers(0, 256, (16, 8, 8, 3), dtype=np.uint8)
  kinds = [_flipped_or_not(seen, images)
           for seen in _linear_inputs(_config(host_cropped=True), images, tmp_path)]
  kind = np.concatenate(kinds)
  assert (kind >= 0).all(), kind  # -1: cropped a second time
  assert 0 < kind.sum() < len(kind), kind  # the flip (augment.flip_prob 0.5) is kept


def test_linear_stage_on_whole_images_crops_them_on_the_device(tmp_path):
  images = np.random.default_rng(3).integers(0, 256, (16, 8, 8, 3), dtype=np.uint8)
  for seen in _linear_inputs(_config(host_cropped=False), images, tmp_path):
    assert (_flipped_or_not(seen, images) == -1).all()


LOSS_OPTIONS = dict(temperature=0.5, variant="in", contrast_mode="one",
                    denominator_mode="one_positive", positives_cap=3)


@pytest.mark.parametrize("method", ["supcon", "simclr"])
@pytest.mark.parametrize("moco", [False, True])
def test_the_loss_gets_the_configured_options_labels_and_queue(method, moco):
  # Every loss option away from its default, three views, and with moco a queue holding some
  # of the batch's labels: the value must be the loss (tests/test_loss_options.py's float64
  # reference) of the embeddings the encoder made, with these options, the labels only for
  # SupCon and the queue as extra contrast rows, scaled by temperature / base_temperature.
  c = _config(method, policy="none")  # views given as they are (cropped on the host)
  c.augment.n_views = 3
  c.loss.update(base_temperature=0.07, **LOSS_OPTIONS)
  r = np.random.default_rng(4)
  images = r.integers(0, 256, (8, 3, 2, 2, 3), dtype=np.uint8)
  labels = r.integers(0, 3, 8).astype(np.int32)
  z = _normalised(images).reshape(8, 3, -1)
  z /= np.linalg.norm(z, axis=-1, keepdims=True)
  carried, extra = {}, {}
  if moco:
    c.moco.update(enabled=True, queue_size=48)
    queue = r.normal(size=(48, 12))
    queue /= np.linalg.norm(queue, axis=1, keepdims=True)
    queue_labels = r.integers(0, 5, 48).astype(np.int32)
    carried = ({}, {"params": {}, "batch_stats": {}, "queue": jnp.asarray(queue, jnp.float32),
                    "queue_labels": jnp.asarray(queue_labels),
                    "queue_next": jnp.zeros((), jnp.int32)})
    extra = dict(extra=queue, extra_labels=queue_labels if method == "supcon" else None)
  mesh = sharding.make_mesh(8)
  loss_fn = methods.get(method).loss_fn(c, _recorder([]), mesh)
  batch = sharding.to_global({"image": images, "label": labels}, mesh)
  loss, _ = jax.jit(loss_fn)({}, carried, batch, jax.random.key(0))
  scale = LOSS_OPTIONS["temperature"] / 0.07
  want = scale * ref_options(z, labels if method == "supcon" else None, **LOSS_OPTIONS, **extra)
  without_queue = scale * ref_options(z, labels if method == "supcon" else None, **LOSS_OPTIONS)
  assert abs(want - without_queue) > 1e-2 or not moco  # the queue matters here
  np.testing.assert_allclose(float(loss), want, rtol=1e-5)


def test_cross_entropy_gets_the_configured_label_smoothing():
  # The stand-in classifier's logits are its three normalised pixel values.
  class Logits(nn.Module):
    @nn.compact
    def __call__(self, x, train):
      return {"logits": x.reshape(x.shape[0], -1)}

  c = _config("ce", policy="none")
  c.loss.label_smoothing = 0.3
  r = np.random.default_rng(5)
  images = r.integers(0, 256, (8, 1, 1, 3), dtype=np.uint8)
  labels = r.integers(0, 3, 8).astype(np.int32)
  mesh = sharding.make_mesh(8)
  loss_fn = methods.get("ce").loss_fn(c, Logits(), mesh)
  batch = sharding.to_global({"image": images, "label": labels}, mesh)
  loss, _ = jax.jit(loss_fn)({}, {}, batch, jax.random.key(0))
  logits = _normalised(images).reshape(8, 3)
  log_p = logits - np.log(np.exp(logits).sum(1, keepdims=True))
  target = 0.7 * np.eye(3)[labels] + 0.3 / 3  # smoothing spreads 0.3 over the 3 classes
  np.testing.assert_allclose(float(loss), -(target * log_p).sum(1).mean(), rtol=1e-5)


def test_each_stage_asks_the_host_for_its_own_crops(monkeypatch):
  # A streamed source of mixed sizes crops on the host: pre-training asks for n_views crops
  # of augment.crop_scale, the linear stage for one of linear.crop_scale.
  asked = []
  monkeypatch.setattr(data, "make_source", lambda data_config, **kw: asked.append(
      (kw["split"], kw["crops"])) or types.SimpleNamespace(labelled=None, **kw))
  c = _config(host_cropped=True)
  c.augment.crop_scale, c.linear.crop_scale = (0.1, 0.9), (0.3, 1.0)
  run = experiment.Run(c, "", methods.get("supcon"), sharding.make_mesh(), 0.0)
  assert run.train_source.global_batch == c.batch_size
  assert experiment._linear_source(run).global_batch == c.linear.batch_size
  assert asked == [("train", data.Crops(2, (0.1, 0.9))), ("train", data.Crops(1, (0.3, 1.0)))]
  # Fine-tuning: one crop of finetune.crop_scale, at its batch size.
  asked.clear()
  c.finetune.update(crop_scale=(0.25, 1.0), batch_size=16)
  tuned = experiment.Run(finetune.run_config(c, c), "", methods.get("ce"), run.mesh, 0.0,
                         labelled=True)
  assert tuned.train_source.global_batch == 16
  assert asked == [("train", data.Crops(1, (0.25, 1.0)))]
  # Multi-crop: pre-training asks for the small crops too, the linear stage never.
  asked.clear()
  c.augment.update(small_views=4, small_size=48, small_crop_scale=(0.05, 0.2))
  run = experiment.Run(c, "", methods.get("supcon"), sharding.make_mesh(), 0.0)
  run.train_source, experiment._linear_source(run)
  assert asked == [("train", data.Crops(2, (0.1, 0.9), 4, 48, (0.05, 0.2))),
                   ("train", data.Crops(1, (0.3, 1.0)))]
  # Cropped on the device, at one batch size, the linear stage reads pre-training's source.
  c = _config(host_cropped=False)
  c.linear.batch_size = c.batch_size
  run = experiment.Run(c, "", methods.get("supcon"), sharding.make_mesh(), 0.0)
  assert experiment._linear_source(run) is run.train_source


def _multi_crop_config(host_cropped):
  c = _config(host_cropped=host_cropped)
  c.augment.update(small_views=2, small_size=4, small_crop_scale=(0.2, 0.3))
  return c


def test_multi_crop_small_views_are_their_own_batch_of_crops_of_each_image():
  # Whole images, cropped on the device: a second batch through the encoder, of 2 small
  # crops per image at 4 px, row 2b + v from image b (blue tells the image).
  r = np.random.default_rng(6)
  images = r.integers(0, 256, (8, 8, 8, 3), dtype=np.uint8)
  images[..., 2] = (np.arange(8) * 30)[:, None, None]
  mesh = sharding.make_mesh(1)
  seen = []
  loss_fn = methods.get("supcon").loss_fn(_multi_crop_config(False),
                                          _recorder(seen, by_mean=True), mesh)
  batch = sharding.to_global({"image": images, "label": np.arange(8, dtype=np.int32)}, mesh)
  jax.jit(loss_fn)({}, {}, batch, jax.random.key(0))
  jax.effects_barrier()
  large, small = seen
  assert large.shape == (16, 8, 8, 3) and small.shape == (16, 4, 4, 3)
  blue = small[..., 2] * STD[2] + MEAN[2]  # back to pixels / 255
  want = np.repeat(np.arange(8) * 30 / 255, 2)[:, None, None]
  # A constant channel stays constant under bilinear resampling; float32 normalising and
  # undoing it round to ~1e-7.
  np.testing.assert_allclose(blue, np.broadcast_to(want, blue.shape), atol=1e-5)
  assert (_flipped_or_not(large, np.repeat(images, 2, axis=0)) == -1).all()  # cropped too


@pytest.mark.parametrize("method", ["supcon", "simclr"])
def test_multi_crop_contrasts_every_view_large_and_small(method):
  # Host-cropped: 2 large views of 2 x 2 px and 3 small of 1 x 1, flipped on the device only.
  # The stand-in encoder embeds a view by its mean pixel (a flip changes nothing), so the loss
  # must be the reference's over all 5 views of each sample.
  c = _multi_crop_config(True)
  c.augment.update(small_views=3, small_size=8)
  c.loss.positives_cap = 5  # one other sample of each class: views counted per sample
  r = np.random.default_rng(7)
  images = r.integers(0, 256, (8, 2, 2, 2, 3), dtype=np.uint8)
  small = r.integers(0, 256, (8, 3, 1, 1, 3), dtype=np.uint8)
  labels = r.integers(0, 3, 8).astype(np.int32)
  z = np.concatenate([_normalised(images).mean((2, 3)), _normalised(small).mean((2, 3))], 1)
  z /= np.linalg.norm(z, axis=-1, keepdims=True)
  mesh = sharding.make_mesh(8)
  loss_fn = methods.get(method).loss_fn(c, _recorder(None, by_mean=True), mesh)
  batch = sharding.to_global({"image": images, "small": small, "label": labels}, mesh)
  loss, _ = jax.jit(loss_fn)({}, {}, batch, jax.random.key(0))
  options = dict(temperature=0.1, variant="out", contrast_mode="all", denominator_mode="all",
                 positives_cap=5)
  want = ref_options(z, labels if method == "supcon" else None, **options)
  # float32 against float64: a mean of 40 log-softmax terms of cosines / 0.1, each rounded
  # to ~1e-6 relative.
  np.testing.assert_allclose(float(loss), want, rtol=1e-5)
  assert abs(want - ref_options(z[:, :2], labels if method == "supcon" else None,
                                **options)) > 1e-2  # the small views matter
