"""CIFAR-10 in ten minutes on one GPU: SupCon pre-training of a ResNet-18 and its linear
evaluation in one process. `:ce` and `:simclr` run the two other methods under the
same budget and data.

  python -m supcon_jax.main --config=configs/cifar10_fast.py --workdir=workdirs/c10_fast \
      --config.data.train_dir=.data/train

Training images come from an image folder (one sub-folder per class). Without
`data.eval_dir`, 500 images per class are held out (split_seed 0; the list is
docs/cifar10_val_split.txt) and training uses the other 45,000; with
`--config.data.eval_dir=DIR` the evaluation uses DIR and training uses all of train_dir.

The epochs are what fits: `time_budget_s` covers the whole process after start-up; the trainer
times the compiled step and cuts `epochs` (a ceiling) so that pre-training ends with
`time_reserve_s` left for the linear stage and the evaluations (see supcon_jax/budget.py).
"""

from supcon_jax import config as config_lib


def get_config(arg: str = ""):
  method = arg or "supcon"
  if method not in ("supcon", "simclr", "ce"):
    raise ValueError(f"configs/cifar10_fast.py:{arg}: the argument is one of supcon, simclr, ce")
  c = config_lib.base_config()
  c.method = method

  c.data.source = "folder"
  c.data.train_dir = ".data/train"
  c.data.eval_dir = ""
  c.data.val_per_class = 500
  c.data.split_seed = 0
  c.data.in_memory = True  # decode the 45,000 JPEGs once; batches are drawn on the device
  c.data.num_classes = 10
  c.data.image_size = 32
  # Statistics of this JPEG copy of CIFAR-10 (its README).
  c.data.mean = (0.4913, 0.4821, 0.4465)
  c.data.std = (0.2452, 0.2428, 0.2606)

  c.model.depth = 18
  c.model.stem = "cifar"
  c.model.head = "mlp"
  c.model.dtype = "bfloat16"

  c.augment.policy = "simaugment"  # the reference CIFAR augmentation
  c.augment.crop_scale = (0.2, 1.0)
  c.augment.n_views = 2

  c.batch_size = 1024  # 43 steps per 45,000 images; large batches suit the contrastive loss
  c.epochs = 400.0  # a ceiling: the budget decides
  # Pre-training and linear evaluation together; 60 s of a 10-minute process are left
  # for the interpreter, JAX, unpacking and decoding the JPEGs, and the report.
  c.time_budget_s = 540.0
  c.time_reserve_s = 75.0  # linear stage on cached features, evaluations, t-SNE
  c.optim.name = "lars"
  c.optim.base_lr = 0.3  # x batch/256: 1.2 peak (SimCLR's LARS scaling)
  c.optim.warmup_epochs = 5.0
  c.optim.weight_decay = 1e-4  # CIFAR-size data needs more decay than ImageNet's 1e-6
  c.loss.temperature = 0.1

  # Linear evaluation on cached representations of the un-augmented images: seconds.
  c.linear.augment = "none"
  c.linear.epochs = 40.0
  c.linear.batch_size = 1024
  c.linear.optim.name = "sgd"
  c.linear.optim.base_lr = 0.4  # x batch/256: 1.6 peak, cosine
  c.linear.optim.momentum = 0.9
  c.linear.optim.weight_decay = 0.0

  if method == "simclr":
    c.loss.temperature = 0.5  # the SimCLR reference temperature for CIFAR
  elif method == "ce":
    c.augment.n_views = 1
    c.augment.policy = "cropflip"  # the reference CE baseline: crop + flip
    c.optim.base_lr = 0.2  # x batch/256: 0.8 peak, the reference CE learning rate
    c.optim.weight_decay = 5e-4

  c.eval_every_epochs = 20  # the accuracy-against-time curve (kNN for contrastive, eval for CE)
  c.knn.num_train = 10_000
  c.log_every_steps = 43
  c.checkpoint_every_steps = 2_150  # every 50 epochs: a crash loses little, saves cost little
  c.keep_checkpoints = 2
  return c
