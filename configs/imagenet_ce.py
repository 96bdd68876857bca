"""The cross-entropy baseline for configs/imagenet.py: the same encoder, data and augmentation.

  python -m supcon_jax.main --config=configs/imagenet_ce.py --workdir=gs://BUCKET/ce_r50 \
      --config.data.data_dir=gs://BUCKET/tensorflow_datasets --distributed

The paper's baseline (77.0% top-1 for ResNet-50 with AutoAugment) is a standard supervised
ResNet trained with cross-entropy, reported by its own classifier.
"""

import os

from supcon_jax import config as config_lib


def get_config(arg: str = ""):
  del arg
  c = config_lib.load_config_file(os.path.join(os.path.dirname(__file__), "imagenet.py"))
  c.method = "ce"
  c.augment.n_views = 1
  c.loss.label_smoothing = 0.1  # common for AutoAugment ResNet-50 baselines
  c.epochs = 350.0  # CE converges sooner than the contrastive loss
  c.optim.base_lr = 0.1  # x batch/256: 3.2 peak at 8192 (LARS, as for SupCon)
  c.optim.weight_decay = 1e-4  # CE needs the usual ResNet weight decay
  c.optim.warmup_epochs = 5.0
  return c
