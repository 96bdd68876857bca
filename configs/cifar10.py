"""The reference CIFAR-10 recipe (the SupContrast repository's README): ResNet-50, CIFAR stem.

  python -m supcon_jax.main --config=configs/cifar10.py --workdir=workdirs/supcon_c10  # SupCon
  python -m supcon_jax.main --config=configs/cifar10.py:simclr --workdir=workdirs/simclr_c10
  python -m supcon_jax.main --config=configs/cifar10.py:ce --workdir=workdirs/ce_c10  # baseline

From TFDS by default; from an image folder (one sub-folder per class) with
  --config.data.source=folder --config.data.train_dir=DIR [--config.data.eval_dir=DIR]
Reference results: 96.0% (SupCon) vs 95.0% (CE) top-1 after 1000 / 500 epochs.
"""

from supcon_jax import config as config_lib


def get_config(arg: str = ""):
  method = arg or "supcon"
  c = config_lib.base_config()
  c.method = method

  c.data.source = "tfds"
  c.data.name = "cifar10"
  c.data.train_split = "train"
  c.data.eval_split = "test"
  c.data.num_classes = 10
  c.data.image_size = 32
  c.data.in_memory = True  # 50,000 32x32 images: decode once, draw batches on the device
  c.data.mean = (0.4914, 0.4822, 0.4465)
  c.data.std = (0.2470, 0.2435, 0.2616)

  c.model.depth = 50
  c.model.stem = "cifar"  # 3x3 stride-1 stem, no max-pool: 32x32 images keep their detail
  c.model.head = "mlp"
  c.model.dtype = "bfloat16"

  # SimCLR-style augmentation with the reference's CIFAR crop range (0.2, 1).
  c.augment.policy = "simaugment"
  c.augment.crop_scale = (0.2, 1.0)
  c.augment.jitter = 0.4
  c.augment.grayscale_prob = 0.2

  c.batch_size = 1024
  c.epochs = 1000.0
  c.optim.name = "sgd"  # the reference trains CIFAR with SGD + momentum, cosine schedule
  c.optim.base_lr = 0.125  # x batch/256: the reference's 0.5 at batch 1024
  c.optim.warmup_epochs = 10.0  # the reference's warm-up for batches > 256
  c.optim.momentum = 0.9
  c.optim.weight_decay = 1e-4
  c.loss.temperature = 0.1  # the reference's SupCon temperature

  # Linear evaluation as in the reference (lr 5 at batch 512, 100 epochs, crop + flip).
  c.linear.epochs = 100.0
  c.linear.batch_size = 512
  c.linear.augment = "cropflip"
  c.linear.optim.name = "sgd"
  c.linear.optim.base_lr = 2.5
  c.linear.optim.momentum = 0.9
  c.linear.optim.weight_decay = 0.0

  if method == "simclr":
    c.loss.temperature = 0.5  # the reference's SimCLR temperature
  elif method == "ce":
    c.augment.n_views = 1
    c.epochs = 500.0
    c.optim.base_lr = 0.2  # x batch/256: the reference's 0.8 at batch 1024
    c.optim.weight_decay = 5e-4
  elif method != "supcon":
    raise ValueError(f"configs/cifar10.py:{arg}: the argument is one of supcon, simclr, ce")

  c.eval_every_epochs = 10
  c.knn.num_train = 10_000
  c.log_every_steps = 50
  c.checkpoint_every_steps = 2_000
  return c
