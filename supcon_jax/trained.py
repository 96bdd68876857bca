"""A trained model, as the trainer's evaluations and users see it: `TrainedModel`, and
`load_encoder(path)` that reads one from a workdir or an export.

  model = load_encoder("workdirs/digits/supcon")  # the newest checkpoint (or step=N)
  r = model.embed(images)  # float32 [N, feature_dim]
  z = model.embed(images, projection=True)  # float32 [N, proj_dim], unit norm

`path` is a training workdir of one method (its `config.json` and `checkpoints/`), or a
directory written by `python -m supcon_jax.export` (`model_card.json` and `encoder.msgpack`).
Only the model's parameters and BatchNorm statistics are read (orbax's partial restore: no
optimiser state, no model initialisation, nothing written to the workdir), onto the first
device JAX has; TensorFlow is never imported.

A model applies the evaluation transform of training: images of another size are resized
to image_size x image_size as the tf.data pipelines do (bilinear with antialiasing; for
`data.host_resize`, the shorter side to image_size / 0.875 and the central crop), then
normalised with the dataset's mean and std. Images already image_size x image_size are
taken as they are, as the evaluation batches of training reach the model. One compiled
program serves every model of one architecture and input (`_compiled_apply`): the
trainer's evaluations, the monitor during training, `embed` and `load_encoder`'s models.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

import flax.serialization
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from supcon_jax import augment, checkpoint, fileio, methods, models, rngs, sharding
from supcon_jax.data.base import EVAL_CROP

# The files of an export directory (written by export.py).
MODEL_CARD = "model_card.json"
WEIGHTS = "encoder.msgpack"
CONFIG = "config.json"  # what the trainer writes into a training workdir
CHECKPOINTS = "checkpoints"
# The config fields that decide the model's program: architecture and input transform.
_PROGRAM = ("method", "model", "data.num_classes", "data.image_size", "data.mean", "data.std",
            "data.host_resize", "probe")


class TrainedModel:
  """A trained model of any method: the encoder (r) with its projection head (z) or its
  classifier (logits), the config that built it, and where its variables were saved."""

  def __init__(self, config: ml_collections.ConfigDict, variables: Any,
               saved: checkpoint.CheckpointRef):
    self.config = config
    self.variables = variables  # {"params": ..., "batch_stats": ...} of the whole model
    self.checkpoint = saved  # the run's checkpoint directory and step, or the export's
    self.step = saved.step
    self.method = methods.get(config.method)
    # The flax module: model.apply(variables, normalised images, train=False) -> outputs.
    self.model = self.method.build_model(config, config.data.num_classes)
    self._apply = _compiled_apply(_program_key(config))

  def on(self, mesh: jax.sharding.Mesh) -> TrainedModel:
    """This model with its variables whole on every device of `mesh` (to take its batches)."""
    return TrainedModel(self.config, sharding.replicate(self.variables, mesh), self.checkpoint)

  @property
  def image_size(self) -> int:
    """The side of the square images the model was trained on."""
    return int(self.config.data.image_size)

  @property
  def channels(self) -> int:
    """Channels of the model's input (one per entry of data.mean)."""
    return len(self.config.data.mean)

  @property
  def has_projection(self) -> bool:
    """Whether the model has a projection head (contrastive methods), so z exists."""
    return self.method.contrastive

  def outputs(self, images: jax.Array, names: Sequence[str] = ("repr",)
              ) -> dict[str, jax.Array]:
    """The model's outputs `names` ("repr", "proj", "logits"), float32, on a batch of images
    [B, image_size, image_size, C] (uint8, or float in [0, 1]), on the devices that hold the
    images."""
    return self._apply(self.variables, images, names=tuple(names))

  def resize(self, images: Any) -> np.ndarray:
    """Images [N, H, W, C] of any size as the model's input pipelines make them: C = 1
    repeated to the model's channels, then resized to image_size x image_size (module
    docstring; uint8 stays uint8, in whole levels). Images of that size pass unchanged."""
    images = self._check_images(images)
    images = np.broadcast_to(images, images.shape[:-1] + (self.channels,))
    if images.shape[1:3] == (self.image_size,) * 2:
      return images
    return np.asarray(_compiled_resize(self.image_size, bool(self.config.data.host_resize))(
        images))

  def embed(self, images: Any, *, batch_size: int = 256, projection: bool = False
            ) -> np.ndarray:
    """float32 r [N, feature_dim] (z [N, proj_dim] with `projection`) of images [N, H, W, C].

    `images`: uint8 in [0, 255] or float in [0, 1], any H and W (resized as the module
    docstring says), C = 1 (grey, repeated) or the model's channels. Batches of `batch_size`
    run through one compiled function (the last is padded: one shape compiles).
    """
    if projection and not self.has_projection:
      raise ValueError(f"method {self.method.name} has no projection head; "
                       "embed(projection=False) gives its representation r")
    images = self.resize(images)
    if batch_size < 1:
      raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    output = "proj" if projection else "repr"
    n = len(images)
    if n == 0:
      return np.zeros((0, self.output_dim(projection)), np.float32)
    batch = min(batch_size, n)
    # Dispatch every batch before reading any back, so transfers overlap computing.
    outs = []
    for start in range(0, n, batch):
      outs.append(self.outputs(pad_rows(images[start:start + batch], batch), (output,))[output])
    return np.concatenate([np.asarray(o) for o in outs])[:n]

  def output_dim(self, projection: bool = False) -> int:
    """The size of r (or of z with `projection`)."""
    if projection:
      return int(self.config.model.proj_dim)
    return models.feature_dim(self.config.model.depth, self.config.model.width)

  def _check_images(self, images: Any) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] not in (1, self.channels):
      raise ValueError(f"images must be [N, H, W, C] with C = 1 or {self.channels}, got shape "
                       f"{images.shape}")
    if images.dtype == np.uint8:
      return images
    if not np.issubdtype(images.dtype, np.floating):
      raise ValueError(f"images must be uint8 in [0, 255] or float in [0, 1], got {images.dtype}")
    images = images.astype(np.float32)
    if images.size and (images.min() < 0 or images.max() > 1):
      raise ValueError(f"float images must be in [0, 1], got values in [{images.min():g}, "
                       f"{images.max():g}]; pass uint8 for [0, 255]")
    return images


def pad_rows(x: np.ndarray, multiple: int) -> np.ndarray:
  """`x` with zero rows appended up to a multiple of `multiple` rows (a short last batch: up
  to a whole one), so that every batch runs through one compiled shape."""
  return np.pad(x, [(0, -len(x) % multiple)] + [(0, 0)] * (x.ndim - 1))


def _program_key(config: ml_collections.ConfigDict) -> str:
  """The `_PROGRAM` fields of `config` as JSON: equal for models that compile alike."""
  fields = {}
  for name in _PROGRAM:
    value = config
    for part in name.split("."):
      value = value.get(part)  # None where a config of an older run has no such field
    fields[name] = value.to_dict() if isinstance(value, ml_collections.ConfigDict) else value
  return json.dumps(fields, sort_keys=True)


@functools.lru_cache(maxsize=16)
def _compiled_apply(program: str) -> Callable[..., dict[str, jax.Array]]:
  """fn(variables, images, names=) of the model `program` (`_program_key`) describes, in
  inference mode; compiled once for every model of that program (the checkpoints of a run,
  an export and its workdir, the monitor during training and the final evaluation)."""
  fields = json.loads(program)
  config = ml_collections.ConfigDict({"method": fields["method"], "model": fields["model"],
                                      "probe": fields["probe"],
                                      "data": {k.split(".")[1]: v for k, v in fields.items()
                                               if k.startswith("data.")}})
  model = methods.get(config.method).build_model(config, config.data.num_classes)

  def apply(variables: Any, images: jax.Array, *, names: tuple[str, ...]
            ) -> dict[str, jax.Array]:
    out = model.apply(variables, _model_input(config, images), train=False)
    return {k: out[k].astype(jnp.float32) for k in names}

  return jax.jit(apply, static_argnames=("names",))


def _model_input(config: ml_collections.ConfigDict, images: jax.Array) -> jax.Array:
  """The evaluation transform of training: images of the model's size, normalised."""
  data = config.data
  if images.dtype == jnp.uint8:
    return augment.make_eval_transform(mean=data.mean, std=data.std)(images)
  # Float images keep their precision: the same normalisation, without rounding.
  return augment.normaliser(data.mean, data.std)(images)


@functools.lru_cache(maxsize=8)
def _compiled_resize(size: int, host_resize: bool) -> Callable[[jax.Array], jax.Array]:
  """The input pipelines' evaluation resize of a batch, compiled (once per input shape)."""

  def resize(images: jax.Array) -> jax.Array:
    x = resize_for_eval(images.astype(jnp.float32), size, host_resize)
    if images.dtype == jnp.uint8:  # the pipelines hand the model whole uint8 levels
      x = jnp.clip(jnp.round(x), 0, 255).astype(jnp.uint8)
    return x

  return jax.jit(resize)


def resize_for_eval(images: jax.Array, size: int, host_resize: bool) -> jax.Array:
  """float [B, H, W, C] to [B, size, size, C] as tfdata.resize / tfdata.center_crop do.

  Bilinear with antialiasing (tf.image.resize(antialias=True)); with `host_resize`, the
  shorter side goes to round(size / 0.875) first (aspect kept) and the centre is cropped.
  """
  b, h, w, c = images.shape
  if not host_resize:
    return jax.image.resize(images, (b, size, size, c), method="linear", antialias=True)
  # float32 and round-half-to-even, as tfdata.center_crop computes the new size.
  hw = np.asarray([h, w], np.float32)
  nh, nw = np.round(hw * np.float32(round(size / EVAL_CROP)) / hw.min()).astype(int)
  images = jax.image.resize(images, (b, nh, nw, c), method="linear", antialias=True)
  top, left = (nh - size) // 2, (nw - size) // 2
  return images[:, top:top + size, left:left + size]


def load_encoder(workdir: str, step: int | None = None) -> TrainedModel:
  """The model trained in `workdir` (its newest checkpoint, or `step`), or an export's.

  `workdir` may be local or on a remote file system (gs://).
  """
  workdir = os.fspath(workdir)
  if _holds(workdir) == CONFIG:
    return _from_workdir(workdir, step)
  return _from_export(workdir, step)


def saved_config(workdir: str) -> ml_collections.ConfigDict:
  """The config of the model `load_encoder(workdir)` loads, without loading it."""
  workdir = os.fspath(workdir)
  if _holds(workdir) == CONFIG:
    return read_config(os.path.join(workdir, CONFIG))
  return ml_collections.ConfigDict(_read_card(os.path.join(workdir, MODEL_CARD))["config"])


def _holds(workdir: str) -> str:
  """CONFIG for a training workdir, MODEL_CARD for an export; else an error saying why."""
  path = epath.Path(workdir)
  if not path.is_dir():
    raise FileNotFoundError(f"no such directory: {workdir}")
  for marker in (CONFIG, MODEL_CARD):
    if (path / marker).exists():
      return marker
  runs = sorted(p.name for p in path.iterdir() if (p / CONFIG).exists())
  if runs:
    raise ValueError(f"{workdir} holds the runs of several methods ({', '.join(runs)}); "
                     f"load one of them: {', '.join(os.path.join(workdir, r) for r in runs)}")
  raise FileNotFoundError(f"{workdir} is neither a training workdir (no {CONFIG}: has training "
                          f"started there?) nor an export directory (no {MODEL_CARD})")


def _read_card(card_path: str) -> dict[str, Any]:
  card = fileio.read_json(card_path)
  if "config" not in card or "step" not in card:
    raise ValueError(f"{card_path} is not a model card written by supcon_jax.export")
  return card


def read_config(path: str) -> ml_collections.ConfigDict:
  """The run's config from a JSON file (config.json), as a ConfigDict."""
  return ml_collections.ConfigDict(fileio.read_json(path))


def abstract_variables(config: ml_collections.ConfigDict) -> Any:
  """Shapes and dtypes of the model's {"params", "batch_stats"}, on the first local device.

  Traced, not computed: no initialiser runs.
  """
  model = methods.get(config.method).build_model(config, config.data.num_classes)
  size = config.data.image_size
  dummy = jax.ShapeDtypeStruct((1, size, size, len(config.data.mean)), jnp.float32)
  shapes = jax.eval_shape(lambda x: model.init(rngs.stream(0, "init"), x, train=False), dummy)
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=device),
                      {"params": shapes["params"], "batch_stats": shapes.get("batch_stats", {})})


def _from_workdir(workdir: str, step: int | None) -> TrainedModel:
  config = read_config(os.path.join(workdir, CONFIG))
  directory = os.path.join(checkpoint.absolute(workdir), CHECKPOINTS)
  target = abstract_variables(config)
  # Read-only: no temporary directory is cleaned up under a run that may still be saving.
  options = ocp.CheckpointManagerOptions(read_only=True, create=False, save_interval_steps=0,
                                         max_to_keep=None, enable_async_checkpointing=False)
  absl_logger = logging.getLogger("absl")
  level = absl_logger.level
  absl_logger.setLevel(logging.ERROR)  # orbax warns that a read-only manager is read-only
  try:
    manager = ocp.CheckpointManager(directory, options=options, item_names=("state", "meta"))
  finally:
    absl_logger.setLevel(level)
  try:
    steps = sorted(manager.all_steps())
    if not steps:
      raise FileNotFoundError(f"no checkpoint in {directory}")
    if step is None:
      step = steps[-1]
    elif step not in steps:
      raise FileNotFoundError(f"no checkpoint {step} in {directory}; it has {steps}")
    # The saved TrainState's params and batch_stats only: the optimiser state stays on disk.
    args = ocp.args.PyTreeRestore(item=target,
                                  restore_args=ocp.checkpoint_utils.construct_restore_args(target),
                                  partial_restore=True)
    try:
      variables = manager.restore(step, args=ocp.args.Composite(state=args))["state"]
    except (ValueError, KeyError, TypeError) as e:
      # e.g. a shape that is not the model's: config.json changed after the checkpoint
      raise ValueError(f"cannot restore checkpoint {step} in {directory} as the model of "
                       f"{os.path.join(workdir, CONFIG)}: {e}") from e
  finally:
    manager.close()
  return TrainedModel(config, variables, checkpoint.CheckpointRef(directory, int(step)))


def _from_export(directory: str, step: int | None) -> TrainedModel:
  card_path, weights_path = os.path.join(directory, MODEL_CARD), os.path.join(directory, WEIGHTS)
  card = _read_card(card_path)
  if step is not None and step != card["step"]:
    raise FileNotFoundError(f"{directory} holds the export of step {card['step']}, not {step}")
  if not os.path.exists(weights_path):
    raise FileNotFoundError(f"{directory} has a {MODEL_CARD} but no {WEIGHTS}")
  config = ml_collections.ConfigDict(card["config"])
  target = abstract_variables(config)
  with open(weights_path, "rb") as f:
    try:
      saved = flax.serialization.msgpack_restore(f.read())
    except ValueError as e:  # msgpack's errors for truncated or foreign data
      raise ValueError(f"cannot read {weights_path}: {e}") from e
  expected = jax.tree.map(lambda s: (s.shape, s.dtype), target)
  found = jax.tree.map(lambda a: (np.shape(a), np.asarray(a).dtype), saved)
  if found != expected:
    raise ValueError(f"{weights_path} does not hold the model that {card_path} describes")
  variables = jax.tree.map(lambda a, s: jax.device_put(a, s.sharding), saved, target)
  return TrainedModel(config, variables,
                      checkpoint.CheckpointRef(directory, int(card["step"])))
