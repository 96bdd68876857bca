"""The paper's ImageNet recipe: SupCon, ResNet-50, batch 8192 over a TPU pod.

  python -m supcon_jax.main --config=configs/imagenet.py --workdir=gs://BUCKET/supcon_r50 \
      --config.data.data_dir=gs://BUCKET/tensorflow_datasets --distributed

Khosla et al. 2020, Sec. 4 and the appendix: ResNet-50 encoder, 2048-d r, MLP head to 128-d,
L_out, tau = 0.1, AutoAugment, LARS with warm-up and cosine decay, 700 epochs, large batches
(the loss sees every embedding of the global batch), then a linear classifier on frozen r.
"""

from supcon_jax import config as config_lib


def get_config(arg: str = ""):
  del arg
  c = config_lib.base_config()
  c.method = "supcon"

  c.data.source = "tfds"
  c.data.name = "imagenet2012"  # needs a prepared TFDS copy (manual download), e.g. on gs://
  c.data.train_split = "train"
  c.data.eval_split = "validation"
  c.data.num_classes = 1000
  c.data.image_size = 224
  # Images differ in size: each view is its own random-resized crop, drawn on the host while
  # decoding (one decode, the JPEG only where the crops are); evaluation: resize + centre crop.
  c.data.host_resize = True
  c.data.mean = (0.485, 0.456, 0.406)
  c.data.std = (0.229, 0.224, 0.225)
  c.data.shuffle_buffer = 50_000

  c.model.depth = 50
  c.model.stem = "imagenet"
  c.model.head = "mlp"  # Dense(2048)-ReLU-Dense(128); the paper found MLP > linear head
  c.model.proj_dim = 128
  c.model.zero_init_residual = True  # standard for large-batch ResNet training (Goyal et al.)
  c.model.dtype = "bfloat16"  # TPU/GPU matrix units; parameters and the loss stay float32

  # An independent crop per view, SimCLR's most important augmentation, with the Inception /
  # SimCLR area range; then flip + AutoAugment (the paper's best policy for SupCon) on device.
  c.augment.policy = "autoaugment"
  c.augment.crop_scale = (0.08, 1.0)
  c.augment.n_views = 2

  c.loss.temperature = 0.1  # the paper's choice; lower is better for accuracy, but less stable
  c.loss.variant = "out"  # L_out beat L_in by a wide margin (Table 2 of the paper)
  c.loss.block_size = 2048  # bounds the per-device [rows, 16,384] logits for the backward pass

  c.batch_size = 8192  # the paper's ResNet-50 batch; larger batches helped SupCon
  c.epochs = 700.0
  c.optim.name = "lars"  # large-batch training; BN and biases excluded from decay/adaptation
  c.optim.base_lr = 0.3  # x batch/256: 9.6 peak at 8192, SimCLR's LARS scaling
  c.optim.warmup_epochs = 10.0
  c.optim.momentum = 0.9
  c.optim.weight_decay = 1e-6

  # Linear evaluation on frozen r: the paper trains it with RMSProp; one random-resized crop
  # (on the host) + flip for training, resize + centre crop for evaluation.
  c.linear.epochs = 90.0
  c.linear.batch_size = 4096
  c.linear.augment = "cropflip"
  c.linear.crop_scale = (0.08, 1.0)
  c.linear.optim.name = "rmsprop"
  c.linear.optim.base_lr = 0.0625  # x batch/256: 1.0 peak at 4096
  c.linear.optim.warmup_epochs = 5.0
  c.linear.optim.momentum = 0.9
  c.linear.optim.weight_decay = 0.0

  c.eval_every_epochs = 10
  c.knn.num_train = 50_000
  c.log_every_steps = 100
  c.checkpoint_every_steps = 2_000
  c.keep_checkpoints = 3
  return c
