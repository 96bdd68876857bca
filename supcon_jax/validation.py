"""Checks of a config before anything is built: a bad value fails in one line naming the
field, instead of deep inside a jitted step, after training, or not at all.

Each list of choices is the one its module implements (`one_of` against it), so the two
cannot disagree. The stage is checked by `experiment.validate`, against the stages that
module implements.
"""

from __future__ import annotations

import difflib
from typing import Any

import ml_collections
from etils import epath

from supcon_jax import (
  augment,
  corruptions,
  data,
  linear_probe,
  losses,
  methods,
  models,
  momentum,
  optim,
  robustness,
)
from supcon_jax.checks import one_of
from supcon_jax.config import base_config, method_names, profile_steps
from supcon_jax.models import chunked


def validate(c: ml_collections.ConfigDict) -> None:
  """Fails fast, naming the field, on values that would otherwise fail late or silently."""
  _check_fields(c.to_dict(), base_config().to_dict())
  for name in method_names(c):
    one_of("config.method", name, methods.METHODS)
  one_of("config.robustness.baseline_method", c.robustness.baseline_method, methods.METHODS)
  one_of("config.data.source", c.data.source, data.SOURCES)
  one_of("config.data.bad_images", c.data.bad_images, data.BAD_IMAGES)
  augment.check_config(c.augment, "config.augment")
  one_of("config.linear.augment", c.linear.augment, linear_probe.POLICIES)
  one_of("config.finetune.augment", c.finetune.augment, linear_probe.POLICIES)
  augment.check_scale("config.finetune.crop_scale", c.finetune.crop_scale)
  if not 0 <= c.finetune.label_smoothing < 1:
    raise ValueError(f"config.finetune.label_smoothing={c.finetune.label_smoothing!r} must be "
                     "in [0, 1)")
  one_of("config.model.depth", c.model.depth, models.DEPTHS)
  one_of("config.model.stem", c.model.stem, models.STEMS)
  one_of("config.model.head", c.model.head, models.HEADS)
  one_of("config.model.dtype", c.model.dtype, models.DTYPES)
  one_of("config.loss.variant", c.loss.variant, losses.VARIANTS)
  one_of("config.loss.contrast_mode", c.loss.contrast_mode, losses.CONTRAST_MODES)
  one_of("config.loss.denominator_mode", c.loss.denominator_mode, losses.DENOMINATOR_MODES)
  for name in ("contrastive_weight", "cross_entropy_weight"):
    if not 0 <= c.loss[name] < float("inf"):
      raise ValueError(f"config.loss.{name}={c.loss[name]!r} must be a finite weight >= 0")
  cap, views = c.loss.positives_cap, c.augment.n_views + c.augment.small_views
  if not isinstance(cap, int) or cap >= 0 and cap % views:
    raise ValueError(f"config.loss.positives_cap={cap!r} must be an integer, < 0 for no cap or "
                     f"a multiple of the {views} views of a sample, augment.n_views + "
                     "augment.small_views (whole samples)")
  optim.check_config(c.optim, "config.optim")
  optim.check_config(c.linear.optim, "config.linear.optim")
  optim.check_config(c.finetune.optim, "config.finetune.optim")
  positive = {"loss.temperature": c.loss.temperature, "batch_size": c.batch_size,
              "linear.batch_size": c.linear.batch_size, "epochs": c.epochs,
              "finetune.batch_size": c.finetune.batch_size,
              "finetune.epochs": c.finetune.epochs,
              "linear.epochs": c.linear.epochs, "data.image_size": c.data.image_size,
              "model.width": c.model.width, "model.proj_dim": c.model.proj_dim,
              "knn.k": c.knn.k, "knn.num_train": c.knn.num_train,
              "knn.full_k": c.knn.full_k, "knn.full_temperature": c.knn.full_temperature,
              "knn.block_size": c.knn.block_size,
              "log_every_steps": c.log_every_steps,
              "checkpoint_every_steps": c.checkpoint_every_steps,
              "keep_checkpoints": c.keep_checkpoints}
  for name, value in positive.items():
    if not value > 0:
      raise ValueError(f"config.{name}={value!r} must be > 0")
  if c.data.num_classes < 2:
    raise ValueError(f"config.data.num_classes={c.data.num_classes!r}: a classifier needs at "
                     "least 2 classes (with one, every prediction is right)")
  if not 0 <= c.data.label_noise <= 1:
    raise ValueError(f"config.data.label_noise={c.data.label_noise!r} must be a fraction of "
                     "the training labels in [0, 1]")
  _check_label_subset(c)
  if c.knn.k > c.knn.num_train:
    raise ValueError(f"config.knn.k={c.knn.k} is more than the config.knn.num_train="
                     f"{c.knn.num_train} training images of the kNN memory bank")
  _check_classes(c)
  if c.loss.base_temperature is not None and not c.loss.base_temperature > 0:
    raise ValueError(f"config.loss.base_temperature={c.loss.base_temperature!r} must be > 0")
  min_size = models.resnet.MIN_IMAGE_SIZE[c.model.stem]
  if c.data.image_size < min_size:
    raise ValueError(f"config.data.image_size={c.data.image_size} is too small for the "
                     f"{c.model.stem} stem (at least {min_size})")
  if c.augment.small_size < min_size:
    raise ValueError(f"config.augment.small_size={c.augment.small_size} is too small for the "
                     f"{c.model.stem} stem (at least {min_size})")
  if c.data.source == "folder" and not c.data.train_dir:
    raise ValueError("config.data.source='folder' needs config.data.train_dir")
  for name in method_names(c):
    method = methods.METHODS[name]
    for views, what in ((method.views(c), "views"), (method.small_views(c), "small views")):
      if c.encoder_chunk_size and views:
        try:
          chunked.check_chunk_size(c.encoder_chunk_size, c.batch_size * views)
        except ValueError as e:
          raise ValueError(f"config.encoder_chunk_size: {e} (batch_size x {what} of "
                           f"{name})") from e
    if c.moco.enabled and method.small_views(c):
      raise ValueError("config.augment.small_views: multi-crop is not combined with the "
                       "momentum encoder (config.moco.enabled); its queue holds the "
                       "augment.n_views views")
    if c.moco.enabled and not method.contrastive:
      raise ValueError(f"config.moco.enabled: method {name} has no embeddings to queue; the "
                       "momentum encoder is for the contrastive methods")
  if c.moco.enabled:
    momentum.check_config(c)
  profile_steps(c)
  for s in c.robustness.severities:
    one_of("config.robustness.severities: severity", s, corruptions.SEVERITIES)
  robustness.corruption_names(c)


def check_devices(c: ml_collections.ConfigDict, devices: int) -> None:
  """ValueError naming the field unless every batch splits evenly over `devices`."""
  batches = [("batch_size", c.batch_size), ("linear.batch_size", c.linear.batch_size)]
  if c.stage == "finetune":
    batches.append(("finetune.batch_size", c.finetune.batch_size))
  for name, batch in batches:
    if batch % devices:
      raise ValueError(f"config.{name}={batch} is not divisible by the {devices} devices; "
                       f"choose a multiple of {devices}")


def check_dataset(c: ml_collections.ConfigDict, num_train: int, fields: tuple[str, ...]) -> None:
  """ValueError naming the field when one of `fields` (batch_size, linear.batch_size,
  finetune.batch_size: an epoch needs a full batch; knn.k: the memory bank needs k images,
  and knn.full_k with knn.full_bank) exceeds the training images."""
  batches = {"batch_size": c.batch_size, "linear.batch_size": c.linear.batch_size,
             "finetune.batch_size": c.finetune.batch_size}
  for name, value in batches.items():
    if name in fields and value > num_train:
      raise ValueError(f"config.{name}={value} is more than the {num_train} training images, "
                       f"so an epoch has no full batch; set config.{name} to at most "
                       f"{num_train}")
  bank = min(c.knn.num_train, num_train)
  if "knn.k" in fields and c.knn.k > bank:
    raise ValueError(f"config.knn.k={c.knn.k} is more than the {bank} training images of the "
                     f"kNN memory bank; set config.knn.k to at most {bank}")
  if "knn.k" in fields and c.knn.full_bank and c.knn.full_k > num_train:
    raise ValueError(f"config.knn.full_k={c.knn.full_k} is more than the {num_train} training "
                     f"images of the full-bank kNN; set config.knn.full_k to at most "
                     f"{num_train}")


def _check_classes(c: ml_collections.ConfigDict) -> None:
  """data.classes: distinct names, as many as data.num_classes, for a source whose classes
  have names (the TFDS label names, the folder's sub-folders)."""
  classes = tuple(c.data.classes)
  if not classes:
    return
  if c.data.source not in ("tfds", "folder"):
    raise ValueError(f"config.data.classes picks classes by name from a tfds or folder source; "
                     f"config.data.source={c.data.source!r} has no class names")
  for name in classes:
    if not isinstance(name, str) or not name.strip():
      raise ValueError(f"config.data.classes: {name!r} is not a class name (a TFDS label name "
                       "such as a WordNet id, or a sub-folder's name)")
  repeated = sorted({name for name in classes if classes.count(name) > 1})
  if repeated:
    raise ValueError(f"config.data.classes names {', '.join(repeated)} more than once")
  if len(classes) != c.data.num_classes:
    raise ValueError(f"config.data.classes names {len(classes)} classes but "
                     f"config.data.num_classes={c.data.num_classes}; make them agree")


def _check_label_subset(c: ml_collections.ConfigDict) -> None:
  """data.label_fraction in (0, 1]; data.label_list a readable file, and not both."""
  fraction, path = c.data.label_fraction, c.data.label_list
  if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not (
      0 < fraction <= 1):
    raise ValueError(f"config.data.label_fraction={fraction!r} must be a fraction of the "
                     "training labels in (0, 1]")
  if not isinstance(path, str):
    raise ValueError(f"config.data.label_list={path!r} must be a path (or \"\" for none)")
  if path and fraction < 1:
    raise ValueError(f"config.data.label_list={path!r} and config.data.label_fraction="
                     f"{fraction!r} both choose the labelled examples; set one of them")
  if path and not epath.Path(path).is_file():
    raise ValueError(f"config.data.label_list={path!r} is not a file (one example's name a "
                     "line)")


def _check_fields(fields: dict[str, Any], known: dict[str, Any], prefix: str = "") -> None:
  """ValueError naming a field that base_config() does not have (a misspelling), with the
  closest real one: a recipe file can add fields that no code reads."""
  for name, value in fields.items():
    if name not in known:
      close = difflib.get_close_matches(name, list(known), n=1)
      hint = f" (did you mean {prefix}{close[0]}?)" if close else ""
      raise ValueError(f"config.{prefix}{name} is not a config field{hint}")
    if isinstance(value, dict) and isinstance(known[name], dict):
      _check_fields(value, known[name], f"{prefix}{name}.")
