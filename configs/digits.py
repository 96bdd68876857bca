"""The embedded demo: SupCon vs cross-entropy on scikit-learn's handwritten digits.

Real data that ships inside scikit-learn (1,797 8x8 images, no download), upsampled to
16x16 RGB, with a narrow ResNet-18. Both methods and the linear evaluation run on a 2-core
CPU in a few minutes:

  python -m supcon_jax.main --config=configs/digits.py --workdir=workdirs/digits
"""

from supcon_jax import config as config_lib


def get_config():
  c = config_lib.base_config()
  c.method = "supcon,ce"  # both, in <workdir>/supcon and <workdir>/ce, then a table
  c.data.source = "arrays"
  c.data.name = "digits"
  c.data.image_size = 16
  c.data.num_classes = 10
  # Statistics of the upsampled digits (pixels / 255); grey images, same in every channel.
  c.data.mean = (0.2, 0.2, 0.2)
  c.data.std = (0.3, 0.3, 0.3)

  c.model.depth = 18
  c.model.width = 0.25  # 16 channels in the first stage: enough for 16x16 digits
  c.model.stem = "cifar"

  # Digits are grey and have a handedness (a mirrored 2, 3 or 7 is no digit): crops and small
  # colour changes only, no flips.
  c.augment.policy = "simaugment"
  c.augment.crop_scale = (0.5, 1.0)
  c.augment.grayscale_prob = 0.0
  c.augment.flip_prob = 0.0

  c.batch_size = 256
  c.epochs = 20  # kNN top-1 is ~97% after 10 epochs; 20 keeps the demo near 3 CPU minutes
  c.optim.name = "lars"
  c.optim.base_lr = 1.0
  c.optim.warmup_epochs = 2
  c.optim.weight_decay = 1e-4
  c.loss.temperature = 0.1

  c.linear.epochs = 30
  c.linear.batch_size = 256
  c.linear.augment = "none"  # train on cached representations: seconds, not minutes
  c.linear.optim.name = "sgd"
  c.linear.optim.base_lr = 1.0

  # --config.stage=finetune afterwards: the whole network and a fresh classifier, the same
  # crops (no flips), SGD with Nesterov momentum.
  c.finetune.epochs = 30
  c.finetune.batch_size = 256
  c.finetune.crop_scale = (0.5, 1.0)
  c.finetune.optim.base_lr = 0.1

  c.eval_every_epochs = 10
  c.knn.num_train = 2000
  c.log_every_steps = 10
  c.checkpoint_every_steps = 100
  return c
