"""The default config every recipe in `configs/` starts from.

A recipe is a file with `get_config()` that calls `base_config()` and changes what its
experiment needs. This module imports nothing but ml_collections, so a recipe loads without
JAX; `validation.validate` checks a config before anything is built.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any

import ml_collections


def base_config() -> ml_collections.ConfigDict:
  """Every field with its default; recipes in configs/ change what they need."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.method = "supcon"  # supcon | simclr (labels unused) | ce (cross-entropy baseline); methods.py
  # all: pre-train, then evaluate | pretrain | linear: linear evaluation of a trained encoder
  # | robustness: score a finished run under corruption (experiment.STAGES)
  c.stage = "all"

  c.data = ml_collections.ConfigDict()
  c.data.source = "arrays"  # tfds | folder | arrays
  c.data.name = "digits"  # TFDS name, or a built-in in-memory dataset (digits)
  c.data.data_dir = ml_collections.config_dict.placeholder(str)  # TFDS data_dir (gs:// ok)
  c.data.train_split = "train"
  c.data.eval_split = "test"
  c.data.train_dir = ""  # folder source: one sub-folder per class
  c.data.eval_dir = ""  # folder source: "" = hold out val_per_class images of train_dir
  c.data.val_per_class = 0  # held out from the training data for validation (0 = use eval split)
  c.data.split_seed = 0  # the seed that chooses the held-out images; fixed so all runs agree
  c.data.bad_images = "fail"  # folder source: fail | skip unreadable images
  c.data.image_size = 32  # training and evaluation size (square)
  c.data.num_classes = 10
  # tfds / folder: only these classes (TFDS label names, e.g. ImageNet's WordNet ids, or
  # sub-folder names), labelled 0, 1, ... in this order; () = every class of the dataset.
  c.data.classes = ()
  c.data.mean = (0.4914, 0.4822, 0.4465)  # per channel, pixels / 255
  c.data.std = (0.2470, 0.2435, 0.2616)
  # Images of mixed sizes (ImageNet): streamed training images get each view's random-resized
  # crop (augment.crop_scale; linear.crop_scale for the linear stage) while decoding, on the
  # host; evaluation images are resized and centre-cropped.
  c.data.host_resize = False
  c.data.shuffle_buffer = 10_000
  c.data.prefetch = 2
  c.data.in_memory = False  # tfds/folder: decode once, then serve from device memory (CIFAR-size)
  # This fraction of the training labels replaced by a uniformly drawn other class, fixed per
  # example for the whole run (the official code's label-noise study); evaluation labels are
  # never changed. data/base.py says how.
  c.data.label_noise = 0.0
  # The stages that train with labels on top of an encoder (the linear classifier, stage all's
  # too, and fine-tuning) see only some training labels: a class-balanced fraction in (0, 1]
  # chosen by the seed, or the examples a file lists, one name a line (SimCLR's ImageNet
  # 1% / 10% lists). Pre-training, kNN and evaluation read whole splits (data/labelled.py).
  c.data.label_fraction = 1.0
  c.data.label_list = ""

  c.model = ml_collections.ConfigDict()
  c.model.depth = 18
  c.model.width = 1.0  # channel multiplier
  c.model.stem = "cifar"  # cifar: 3x3 stride 1, no max-pool | imagenet: 7x7 stride 2 + max-pool
  c.model.head = "mlp"  # mlp: Dense(d)-ReLU-Dense(proj_dim) | linear: Dense(proj_dim)
  c.model.proj_dim = 128
  c.model.zero_init_residual = False
  c.model.dtype = "float32"  # computation dtype; bfloat16 on GPU/TPU. Parameters stay float32.

  c.augment = ml_collections.ConfigDict()
  c.augment.policy = "simaugment"  # simaugment | randaugment | autoaugment | cropflip | none
  c.augment.n_views = 2
  c.augment.crop_scale = (0.2, 1.0)  # random-resized crop area range
  c.augment.flip_prob = 0.5  # horizontal flip; 0 for digits and text-like data
  c.augment.jitter = 0.4  # brightness/contrast/saturation strength (hue is jitter / 4)
  c.augment.jitter_prob = 0.8
  c.augment.grayscale_prob = 0.2
  c.augment.blur_prob = 0.0  # SimCLR ImageNet uses 0.5
  c.augment.ra_num_ops = 2
  c.augment.ra_magnitude = 9
  # Multi-crop (SwAV, solo-learn): besides the n_views crops, small_views crops of
  # small_size pixels covering small_crop_scale of the image, each size its own batch through
  # the same network, all contrasted in the loss (SwAV: 6 x 96 px, scale (0.05, 0.14), beside
  # 2 x 224). 0 = off.
  c.augment.small_views = 0
  c.augment.small_size = 96
  c.augment.small_crop_scale = (0.05, 0.14)

  c.loss = ml_collections.ConfigDict()
  c.loss.temperature = 0.1
  c.loss.base_temperature = ml_collections.config_dict.placeholder(float)
  c.loss.variant = "out"  # out: L_out (the paper's) | in: L_in
  c.loss.contrast_mode = "all"
  # The official code's options (losses.py): who is in each positive's denominator (all |
  # one_positive | only_negatives), and at most this many positives besides the anchor's own
  # views (a multiple of augment.n_views; < 0: no cap).
  c.loss.denominator_mode = "all"
  c.loss.positives_cap = -1
  # The official code's joint objective: contrastive_weight x the contrastive loss, plus
  # cross_entropy_weight x the cross-entropy of the probe (below) on every view.
  c.loss.contrastive_weight = 1.0
  c.loss.cross_entropy_weight = 1.0
  c.loss.block_size = ml_collections.config_dict.placeholder(int)  # anchor rows per block
  c.loss.label_smoothing = 0.0  # ce only

  c.batch_size = 256  # global, over all devices and hosts
  # > 0: the model runs over the batch's images in chunks of this many, each augmented inside
  # its chunk and rematerialised for the backward pass, so augmentation and activation
  # memory grow with the chunk, not the batch; the loss still sees every embedding and its
  # gradient is exact. BatchNorm then normalises each chunk by its own statistics ("ghost"
  # BN, as per-device BN does) and the running averages are the mean over chunks; inference
  # is unchanged. A multiple of the device count, it must divide batch_size x views. Use it
  # when the batch does not fit (models/chunked.py).
  c.encoder_chunk_size = 0
  # A momentum encoder and a queue of past keys with their labels (momentum.py), for the
  # contrastive methods: many more negatives and positives than a small batch holds.
  c.moco = ml_collections.ConfigDict()
  c.moco.enabled = False
  c.moco.momentum = 0.999  # of the key model's exponential moving average
  c.moco.queue_size = 65_536  # past keys, a multiple of batch_size x views
  c.epochs = 100.0  # float: a fraction of an epoch is a valid (short) run
  c.optim = ml_collections.ConfigDict()
  c.optim.name = "lars"
  c.optim.base_lr = 0.3  # learning rate = base_lr * batch_size / 256
  c.optim.warmup_epochs = 10.0
  c.optim.max_warmup_fraction = 0.2  # a shorter run (time budget, test) warms up for 20% of it
  c.optim.momentum = 0.9
  c.optim.weight_decay = 1e-6
  c.optim.nesterov = False
  c.optim.trust_coefficient = 0.001

  c.linear = ml_collections.ConfigDict()  # linear evaluation on the frozen representation
  # stage=linear: the encoder of this workdir ("" = the run's own): possibly trained on
  # another dataset (transfer: other classes, image size), its newest checkpoint or this step.
  c.linear.encoder_workdir = ""
  c.linear.encoder_step = 0
  c.linear.epochs = 10.0
  c.linear.batch_size = 256
  c.linear.augment = "cropflip"  # cropflip | none
  c.linear.crop_scale = (0.2, 1.0)
  c.linear.optim = ml_collections.ConfigDict()
  c.linear.optim.name = "sgd"
  c.linear.optim.base_lr = 0.1
  c.linear.optim.warmup_epochs = 0.0
  c.linear.optim.max_warmup_fraction = 0.2
  c.linear.optim.momentum = 0.9
  c.linear.optim.weight_decay = 0.0
  c.linear.optim.nesterov = False
  c.linear.optim.trust_coefficient = 0.001

  # stage=finetune: the trained encoder (this workdir's, or linear.encoder_workdir's at
  # linear.encoder_step) and a fresh linear classifier trained together with cross-entropy on
  # this config's dataset, BatchNorm in training mode (the paper's transfer protocol, after
  # Kornblith et al. 2019), in <workdir>/finetune.
  c.finetune = ml_collections.ConfigDict()
  c.finetune.epochs = 30.0
  c.finetune.batch_size = 256
  c.finetune.augment = "cropflip"  # cropflip | none
  c.finetune.crop_scale = (0.08, 1.0)
  c.finetune.label_smoothing = 0.0
  c.finetune.optim = ml_collections.ConfigDict()
  c.finetune.optim.name = "sgd"
  c.finetune.optim.base_lr = 0.05  # learning rate = base_lr * batch_size / 256
  c.finetune.optim.warmup_epochs = 0.0
  c.finetune.optim.max_warmup_fraction = 0.2
  c.finetune.optim.momentum = 0.9
  c.finetune.optim.weight_decay = 1e-4
  c.finetune.optim.nesterov = True
  c.finetune.optim.trust_coefficient = 0.001

  # A linear classifier on r trained during pre-training from the same views (contrastive
  # methods): behind a stop-gradient an online probe, whose accuracy shows at every
  # evaluation and in results.json as probe_top1; without it (stop_gradient=False),
  # cross-entropy trains the encoder jointly with the contrastive loss.
  c.probe = ml_collections.ConfigDict()
  c.probe.enabled = False
  c.probe.stop_gradient = True

  # Every N epochs of training, evaluate on the eval split: kNN top-1 on r for every method,
  # and the model's own classifier for methods that have one (ce). 0 = off.
  c.eval_every_epochs = 0
  # Corruption robustness (robustness.py): top-1 under each corruption at each severity, and
  # the corruption errors against a baseline run. Also --config.stage=robustness on a
  # finished workdir.
  c.robustness = ml_collections.ConfigDict()
  c.robustness.enabled = False  # stage=all: score the trained classifier on corrupted images
  c.robustness.corruptions = ()  # empty: all available (TFDS's copy, or the corruptions package's)
  c.robustness.severities = (1, 2, 3, 4, 5)
  c.robustness.baseline_workdir = ""  # the run mCE is relative to
  # In a run of several methods, the others' mCE is relative to this method's run.
  c.robustness.baseline_method = "ce"
  c.knn = ml_collections.ConfigDict()  # the weighted cosine kNN classifier on r
  c.knn.k = 20
  c.knn.temperature = 0.1
  c.knn.num_train = 5_000  # training images in the memory bank
  # After the final evaluation, also the kNN the self-supervised literature reports: the
  # whole training split as the memory bank, k = 200 and votes exp(sim / 0.07) as InstDisc
  # (Wu et al. 2018) and solo-learn, in results.json as knn_full_top1. The bank is streamed
  # through in blocks of block_size rows (queries too) with a running top-k, so memory does
  # not grow with the training split (ImageNet: 1.28M rows).
  c.knn.full_bank = False
  c.knn.full_k = 200
  c.knn.full_temperature = 0.07
  c.knn.block_size = 8_192

  # > 0: cut pre-training epochs to what fits in this many seconds for the whole run,
  # measured after compilation (see budget.py); time_reserve_s is kept for linear eval.
  c.time_budget_s = 0.0
  c.time_reserve_s = 60.0

  c.log_every_steps = 50
  # "A,B": a jax.profiler trace of pre-training steps A..B into <workdir>/profile (host 0),
  # for TensorBoard's profile plugin or Perfetto. "" = off.
  c.profile_steps = ""
  # TensorBoard events beside metrics.jsonl (clu's writer, which needs TensorFlow). False:
  # metrics.jsonl only, and a run on in-memory arrays never imports TensorFlow (~5 s).
  c.tensorboard = True
  c.checkpoint_every_steps = 1_000
  c.keep_checkpoints = 3
  c.skip_nonfinite = False  # True: skip steps with a non-finite loss/gradient and count them
  c.embedding_plot = True  # results: PNG of the learned embedding (t-SNE or PCA)
  return c


# What a workdir's training depends on: a resume that changes any of these is refused (its
# checkpoints would continue another run). Everything else may change on resume: epochs,
# time budget, logging, checkpoint and evaluation settings, the linear stage, loss.block_size
# (memory only), data.in_memory and paths.
IDENTITY = ("method", "batch_size", "model", "loss", "optim", "augment.n_views",
            "augment.small_views", "augment.small_size", "data.source",
            "data.name", "data.num_classes", "data.image_size", "data.host_resize",
            "data.val_per_class", "data.split_seed", "data.mean", "data.std", "data.label_noise",
            "data.classes",
            "encoder_chunk_size", "moco", "probe")
_NOT_IDENTITY = ("loss.block_size",)


def identity(c: ml_collections.ConfigDict) -> dict[str, object]:
  """The `IDENTITY` fields of a config as {dotted name: value} (blocks flattened)."""
  out = {}
  for name in IDENTITY:
    value = c
    for part in name.split("."):
      value = value[part]
    items = value.items() if isinstance(value, ml_collections.ConfigDict) else [(None, value)]
    for key, v in items:
      dotted = name if key is None else f"{name}.{key}"
      if dotted not in _NOT_IDENTITY:
        out[dotted] = v
  return out


def profile_steps(c: ml_collections.ConfigDict) -> tuple[int, int] | None:
  """The (first, last) steps `config.profile_steps` asks to trace, or None when it is ""."""
  if not c.profile_steps:
    return None
  try:
    first, last = (int(part) for part in str(c.profile_steps).split(","))
  except ValueError:
    first = last = 0
  if not 1 <= first <= last:
    raise ValueError(f"config.profile_steps={c.profile_steps!r}: expected 'A,B', the first "
                     "and last steps to trace, with 1 <= A <= B")
  return first, last


def method_names(c: ml_collections.ConfigDict) -> list[str]:
  """The methods `config.method` names: one, or a comma-separated list to compare."""
  return [m.strip() for m in c.method.split(",")]


def load_config_file(path: str, arg: str = "") -> ml_collections.ConfigDict:
  """`get_config(arg)` of a config file: lets one recipe build on another (e.g. ce on supcon)."""
  module = load_module(path)
  return module.get_config(arg) if arg else module.get_config()


def load_module(path: str) -> Any:
  """The config file `path` as a module (its get_config and whatever else it defines)."""
  spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3] + "_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module
