"""SupCon on ImageNet with a momentum encoder and a queue of past keys (config.moco).

  python -m supcon_jax.main --config=configs/imagenet_moco.py --workdir=gs://BUCKET/moco_r50 \
      --config.data.data_dir=gs://BUCKET/tensorflow_datasets --distributed

configs/imagenet.py plus the momentum recipe behind the SupCon reference repository's best
released ImageNet result (79.1% top-1 for ResNet-50 with a momentum encoder): a key model that
is an exponential moving average (momentum 0.999) of the trained one, and a queue of 65,536
of its embeddings with their labels that every anchor is contrasted against, positives
included. It lets a smaller batch (--config.batch_size=2048, queue 65,536 = 16 steps of keys)
see as many negatives and positives as the paper's 8,192.
"""

import os

from supcon_jax import config as config_lib


def get_config(arg: str = ""):
  del arg
  c = config_lib.load_config_file(os.path.join(os.path.dirname(__file__), "imagenet.py"))
  c.moco.enabled = True
  c.moco.momentum = 0.999  # MoCo's: the keys change slowly, so the queue stays consistent
  c.moco.queue_size = 65_536  # a multiple of batch_size x views (8,192 x 2: four steps of keys)
  return c
