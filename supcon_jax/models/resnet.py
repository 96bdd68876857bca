"""ResNet v1 encoders (He et al., 2016) for SupCon, laid out like torchvision's.

The encoder maps images to the representation r: the global average pool of the last stage,
2048*width-d for the bottleneck depths (50+) and 512*width-d for 18/34. Layer for layer the
parameters match torchvision's resnet (same convs, same BNs, no conv biases), so the ImageNet-stem
ResNet-50 has torchvision's 23,508,032 parameters without its fc.

Parameters are float32; `dtype` only sets the computation dtype (bfloat16 on GPU/TPU).
BatchNorm needs no `axis_name`: the trainer applies the model under `jax.jit` to a batch sharded
over the mesh, and XLA computes the batch statistics over the global batch, so BN is synchronised
across devices automatically (the paper's large-batch setting).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from supcon_jax.checks import one_of

STAGE_SIZES = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
    200: (3, 24, 36, 3),
}
DEPTHS = tuple(STAGE_SIZES)
BOTTLENECK_DEPTHS = (50, 101, 152, 200)
# Total downsampling of each stem and the three stride-2 stages. A smaller image side would leave
# some stride-2 layer a 1-pixel input (all padding around it) and the last stage below 1 pixel
# per output, which the padding would only hide.
MIN_IMAGE_SIZE = {"cifar": 8, "imagenet": 32}
STEMS = tuple(MIN_IMAGE_SIZE)
# Computation dtypes by config name; parameters are always float32. float16 is left out: without
# loss scaling its range overflows in the contrastive logits and BatchNorm statistics.
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}

# torchvision's kaiming_normal_(mode="fan_out", nonlinearity="relu"): an untruncated normal.
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def check_encoder_args(depth: int, width: float, stem: str = "cifar") -> None:
  """ValueError naming the bad field; called where a model is built, not at its first init."""
  one_of("ResNet depth", depth, DEPTHS)
  one_of("ResNet stem", stem, STEMS)
  if not width > 0:
    raise ValueError(f"ResNet width multiplier must be > 0, got {width!r}")


def compute_dtype(name: Any) -> Any:
  """The computation dtype for a config name ("float32" | "bfloat16") or such a dtype itself."""
  key = name if isinstance(name, str) else jnp.dtype(name).name
  one_of("model dtype", key, DTYPES)
  return DTYPES[key]


def stage_channels(width: float, stage: int) -> int:
  """Channels of the 3x3 convs of a stage (0-3): 64 * 2**stage * width, rounded, at least 1."""
  return max(1, round(64 * 2**stage * width))


def feature_dim(depth: int, width: float = 1.0) -> int:
  """Size of the representation r of a ResNet of this depth and width."""
  check_encoder_args(depth, width)
  expansion = 4 if depth in BOTTLENECK_DEPTHS else 1
  return stage_channels(width, 3) * expansion


def _conv(features: int, kernel: int, strides: int, dtype: Any, name: str) -> nn.Conv:
  # Explicit symmetric padding (as in torchvision), not "SAME", which pads stride-2 convs
  # asymmetrically on even sizes.
  pad = (kernel - 1) // 2
  return nn.Conv(features, (kernel, kernel), strides=(strides, strides),
                 padding=((pad, pad), (pad, pad)), use_bias=False, dtype=dtype,
                 param_dtype=jnp.float32, kernel_init=conv_init, name=name)


def _norm(train: bool, dtype: Any, name: str, zero_scale: bool = False) -> nn.BatchNorm:
  # Flax's momentum is the weight of the old running value: 0.9 here is PyTorch's 0.1.
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype,
                      param_dtype=jnp.float32, name=name,
                      scale_init=nn.initializers.zeros if zero_scale else nn.initializers.ones)


class _Block(nn.Module):
  """The fields every residual block has."""
  channels: int
  strides: int = 1
  zero_init_residual: bool = False
  dtype: Any = jnp.float32


class BasicBlock(_Block):
  """Two 3x3 convs (ResNet-18/34)."""

  @nn.compact
  def __call__(self, x, train: bool):
    y = _conv(self.channels, 3, self.strides, self.dtype, "conv1")(x)
    y = nn.relu(_norm(train, self.dtype, "bn1")(y))
    y = _conv(self.channels, 3, 1, self.dtype, "conv2")(y)
    y = _norm(train, self.dtype, "bn2", self.zero_init_residual)(y)
    return nn.relu(y + _shortcut(x, self.channels, self.strides, train, self.dtype))


class BottleneckBlock(_Block):
  """1x1 reduce, 3x3, 1x1 expand (x4) (ResNet-50+).

  The stride sits in the 3x3 conv, not the first 1x1 ("ResNet v1.5", as torchvision and the Flax
  ImageNet example do): same parameters, slightly more accurate than the paper's placement.
  """

  @nn.compact
  def __call__(self, x, train: bool):
    y = _conv(self.channels, 1, 1, self.dtype, "conv1")(x)
    y = nn.relu(_norm(train, self.dtype, "bn1")(y))
    y = _conv(self.channels, 3, self.strides, self.dtype, "conv2")(y)
    y = nn.relu(_norm(train, self.dtype, "bn2")(y))
    y = _conv(self.channels * 4, 1, 1, self.dtype, "conv3")(y)
    y = _norm(train, self.dtype, "bn3", self.zero_init_residual)(y)
    return nn.relu(y + _shortcut(x, self.channels * 4, self.strides, train, self.dtype))


def _shortcut(x, features: int, strides: int, train: bool, dtype: Any):
  """Identity, or a 1x1 conv + BN projection where the shape changes (torchvision's option B).

  Called inside a block's compact __call__, so its modules become that block's children.
  """
  if strides == 1 and x.shape[-1] == features:
    return x
  x = _conv(features, 1, strides, dtype, "proj_conv")(x)
  return _norm(train, dtype, "proj_bn")(x)


class ResNet(nn.Module):
  """ResNet v1 encoder: images [N, H, W, C] -> representation r float32 [N, feature_dim]."""
  depth: int
  width: float = 1.0
  stem: str = "cifar"  # cifar: 3x3 stride 1, no max-pool | imagenet: 7x7 stride 2 + max-pool
  zero_init_residual: bool = False  # last BN scale of every block starts at 0 (Goyal et al.)
  dtype: Any = jnp.float32

  def __post_init__(self):
    check_encoder_args(self.depth, self.width, self.stem)
    super().__post_init__()

  def _check_input(self, x) -> None:
    if x.ndim != 4:
      raise ValueError(f"ResNet expects images [N, H, W, C], got shape {x.shape}")
    need = MIN_IMAGE_SIZE[self.stem]
    if min(x.shape[1:3]) < need:
      raise ValueError(
          f"image size {x.shape[1]}x{x.shape[2]} is too small for the {self.stem} stem: it "
          f"downsamples {need}x in all, so the last stage would see less than one pixel; "
          f"use images of at least {need}x{need}")

  @nn.compact
  def __call__(self, x, train: bool):
    self._check_input(x)
    x = jnp.asarray(x, self.dtype)
    stem_channels = stage_channels(self.width, 0)
    if self.stem == "imagenet":
      x = _conv(stem_channels, 7, 2, self.dtype, "stem_conv")(x)
      x = nn.relu(_norm(train, self.dtype, "stem_bn")(x))
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    else:
      x = _conv(stem_channels, 3, 1, self.dtype, "stem_conv")(x)
      x = nn.relu(_norm(train, self.dtype, "stem_bn")(x))
    block = BottleneckBlock if self.depth in BOTTLENECK_DEPTHS else BasicBlock
    for stage, num_blocks in enumerate(STAGE_SIZES[self.depth]):
      for i in range(num_blocks):
        strides = 2 if stage > 0 and i == 0 else 1
        x = block(stage_channels(self.width, stage), strides, self.zero_init_residual,
                  self.dtype, name=f"stage{stage + 1}_block{i + 1}")(x, train)
    # Pool in float32: r feeds the normalised projection and the linear probe.
    return jnp.mean(x.astype(jnp.float32), axis=(1, 2))



def forward_macs(depth: int, width: float = 1.0, stem: str = "cifar", image_size: int = 32,
                 *, count_padding: bool = True) -> int:
  """Multiply-accumulates of one image's forward pass through every conv of `ResNet`.

  Walks the same layers as `ResNet.__call__`; BatchNorm, ReLU and pooling are left out (a
  fraction of a percent of the FLOPs, none of them on matrix units). By default every kernel
  tap counts, also where it meets the zero padding (the usual convention, and what the
  hardware computes); `count_padding=False` counts only taps inside the image, as XLA's
  cost analysis does.
  """
  check_encoder_args(depth, width, stem)
  macs, size = 0, image_size

  def conv(c_in: int, c_out: int, kernel: int, stride: int) -> None:
    nonlocal macs, size
    taps = (_taps_inside(size, kernel, stride) if not count_padding
            else _conv_out(size, kernel, stride) * kernel)  # output positions x taps, one axis
    size = _conv_out(size, kernel, stride)
    macs += taps * taps * c_in * c_out

  channels = stage_channels(width, 0)
  if stem == "imagenet":
    conv(3, channels, 7, 2)
    size = _conv_out(size, 3, 2)  # the max-pool
  else:
    conv(3, channels, 3, 1)
  bottleneck = depth in BOTTLENECK_DEPTHS
  for stage, num_blocks in enumerate(STAGE_SIZES[depth]):
    c = stage_channels(width, stage)
    c_out = 4 * c if bottleneck else c
    for i in range(num_blocks):
      stride = 2 if stage > 0 and i == 0 else 1
      c_in = channels
      if bottleneck:
        conv(c_in, c, 1, 1)
        conv(c, c, 3, stride)
        conv(c, c_out, 1, 1)
      else:
        conv(c_in, c, 3, stride)
        conv(c, c, 3, 1)
      if stride != 1 or c_in != c_out:  # projection shortcut, at the block's output size
        macs += size * size * c_in * c_out
      channels = c_out
  return macs


def _conv_out(size: int, kernel: int, stride: int) -> int:
  pad = (kernel - 1) // 2  # the symmetric padding of `_conv`
  return (size + 2 * pad - kernel) // stride + 1


def _taps_inside(size: int, kernel: int, stride: int) -> int:
  """(output position, kernel tap) pairs along one axis whose input lies inside the image."""
  pad = (kernel - 1) // 2
  return sum(0 <= i * stride - pad + j < size
             for i in range(_conv_out(size, kernel, stride)) for j in range(kernel))
