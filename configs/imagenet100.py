"""ImageNet-100: SupCon on the 100-class ImageNet subset of CMC and solo-learn, one GPU.

  python -m supcon_jax.main --config=configs/imagenet100.py --workdir=workdirs/in100_supcon \
      --config.data.data_dir=/data/tensorflow_datasets
  # or from an ImageNet folder (train/<wnid>/*.JPEG, val/<wnid>/*.JPEG; other classes ignored):
  python -m supcon_jax.main --config=configs/imagenet100.py --workdir=workdirs/in100_supcon \
      --config.data.source=folder --config.data.train_dir=/data/imagenet/train \
      --config.data.eval_dir=/data/imagenet/val

The subset of Tian et al. 2019 (Contrastive Multiview Coding), which solo-learn and much of the
self-supervised literature report on: about 126,700 training and 5,000 validation images of
the classes in `CLASSES`, labelled 0..99 in that order. The self-supervised codebases' setting
rather than the paper's: ResNet-18 at 224 px, batch 256, 400 epochs (solo-learn's), with the
kNN over the whole training split (k = 200, T = 0.07) that they report besides linear
evaluation.
"""

from supcon_jax import config as config_lib

# The 100 WordNet ids of ImageNet-100, in the published order, which sets the labels:
# HobbitLong/CMC imagenet100.txt (the list's origin), the same as solo-learn's
# solo/data/dataset_subset/imagenet100_classes.txt.
CLASSES = (
    "n02869837", "n01749939", "n02488291", "n02107142", "n13037406", "n02091831", "n04517823",
    "n04589890", "n03062245", "n01773797", "n01735189", "n07831146", "n07753275", "n03085013",
    "n04485082", "n02105505", "n01983481", "n02788148", "n03530642", "n04435653", "n02086910",
    "n02859443", "n13040303", "n03594734", "n02085620", "n02099849", "n01558993", "n04493381",
    "n02109047", "n04111531", "n02877765", "n04429376", "n02009229", "n01978455", "n02106550",
    "n01820546", "n01692333", "n07714571", "n02974003", "n02114855", "n03785016", "n03764736",
    "n03775546", "n02087046", "n07836838", "n04099969", "n04592741", "n03891251", "n02701002",
    "n03379051", "n02259212", "n07715103", "n03947888", "n04026417", "n02326432", "n03637318",
    "n01980166", "n02113799", "n02086240", "n03903868", "n02483362", "n04127249", "n02089973",
    "n03017168", "n02093428", "n02804414", "n02396427", "n04418357", "n02172182", "n01729322",
    "n02113978", "n03787032", "n02089867", "n02119022", "n03777754", "n04238763", "n02231487",
    "n03032252", "n02138441", "n02104029", "n03837869", "n03494278", "n04136333", "n03794056",
    "n03492542", "n02018207", "n04067472", "n03930630", "n03584829", "n02123045", "n04229816",
    "n02100583", "n03642806", "n04336792", "n03259280", "n02116738", "n02108089", "n03424325",
    "n01855672", "n02090622",
)


def get_config(arg: str = ""):
  del arg
  c = config_lib.base_config()
  c.method = "supcon"

  c.data.source = "tfds"
  # TFDS's imagenet2012 (manual download) filtered to the 100 classes before decoding: each
  # epoch still reads the other 900 classes' records, so where reading is the bottleneck
  # a folder of the 100 classes (symlinks will do) with data.source=folder reads a tenth.
  c.data.name = "imagenet2012"
  c.data.train_split = "train"
  c.data.eval_split = "validation"
  c.data.classes = CLASSES
  c.data.num_classes = len(CLASSES)
  c.data.image_size = 224
  # Images differ in size: each view is its own random-resized crop, drawn on the host while
  # decoding; evaluation: resize + centre crop (as configs/imagenet.py).
  c.data.host_resize = True
  c.data.mean = (0.485, 0.456, 0.406)
  c.data.std = (0.229, 0.224, 0.225)
  c.data.shuffle_buffer = 20_000  # a sixth of the 126,700 images

  # ResNet-18: what solo-learn and the ImageNet-100 tables use, and what trains 400 epochs on
  # one GPU in days; its 512-d r and the ImageNet stem for 224 px.
  c.model.depth = 18
  c.model.stem = "imagenet"
  c.model.head = "mlp"
  c.model.proj_dim = 128  # the paper's
  c.model.dtype = "bfloat16"  # tensor cores; parameters and the loss stay float32

  # SimCLR's ImageNet views (colour strength 1.0: jitter 0.8 and hue 0.2, blur half the time),
  # solo-learn's "symmetric" augmentation, so the figures compare with its tables.
  c.augment.policy = "simaugment"
  c.augment.crop_scale = (0.08, 1.0)
  c.augment.n_views = 2
  c.augment.jitter = 0.8
  c.augment.blur_prob = 0.5

  c.loss.temperature = 0.1  # the paper's

  # solo-learn's 2 GPUs x 128 in one step. Where the 512 views of 224 px do not fit one GPU,
  # --config.encoder_chunk_size=256 halves the activations and keeps the loss exact.
  c.batch_size = 256
  c.epochs = 400.0  # solo-learn's ImageNet-100 schedule
  c.optim.name = "lars"  # as the paper; BN and biases excluded from decay and adaptation
  c.optim.base_lr = 0.3  # x batch / 256: a peak of 0.3 at 256, SimCLR's LARS scaling
  c.optim.warmup_epochs = 10.0
  c.optim.momentum = 0.9
  c.optim.weight_decay = 1e-5  # solo-learn's for ResNet-18 here: a tenth the data of ImageNet

  # solo-learn's linear evaluation on ImageNet-100: 100 epochs of SGD, batch 256.
  c.linear.epochs = 100.0
  c.linear.batch_size = 256
  c.linear.augment = "cropflip"
  c.linear.crop_scale = (0.08, 1.0)
  c.linear.optim.name = "sgd"
  c.linear.optim.base_lr = 0.1
  c.linear.optim.momentum = 0.9
  c.linear.optim.weight_decay = 0.0

  c.eval_every_epochs = 10
  c.knn.num_train = 20_000  # the monitor's sample during training
  c.knn.full_bank = True  # at the end: the kNN the field reports, over all 126,700 images
  c.log_every_steps = 100
  c.checkpoint_every_steps = 2_000
  c.keep_checkpoints = 3
  return c
