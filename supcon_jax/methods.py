"""The methods, one record each: the only place where a method's name decides anything.

A record says whether the loss sees labels, how many views of each image a step trains on,
which model to build, the loss, and how stage "all" evaluates the trained model.
`experiment.py` runs its stages from these records; the step, the benchmark and the model
loader read them too. Adding a method is one entry in `METHODS`
plus its loss in `losses.py`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from supcon_jax import augment, data, losses, models, momentum, train
from supcon_jax.checks import one_of
from supcon_jax.models import chunked
from supcon_jax.train import LossFn

# How stage "all" evaluates a trained model:
LINEAR = "linear"  # a linear classifier trained on the frozen representation r
CLASSIFIER = "classifier"  # the model's own classifier, trained with it


@dataclasses.dataclass(frozen=True)
class Method:
  """What distinguishes one way of training the encoder from another."""
  name: str
  uses_labels: bool  # False: self-supervised; labels are only used to evaluate
  contrastive: bool  # True: config.augment.n_views views per image and a projection head
  evaluation: str  # LINEAR or CLASSIFIER
  build_model: Callable[[Any, int], nn.Module]  # (config, num_classes) -> model
  make_loss: Callable[[Method, Any, nn.Module, Callable, Mesh], LossFn]

  def probed(self, config: Any) -> bool:
    """Whether the model carries an online linear probe on r (`config.probe`; contrastive
    methods only: ce has its own classifier)."""
    return self.contrastive and _probe_enabled(config)

  def views(self, config: Any) -> int:
    """Augmented views of each image per training step."""
    return config.augment.n_views if self.contrastive else 1

  def small_views(self, config: Any) -> int:
    """Multi-crop's small views of each image per training step, beside `views`."""
    return config.augment.get("small_views", 0) if self.contrastive else 0

  def initial_momentum(self, config: Any, params: Any, batch_stats: Any) -> Any:
    """The momentum encoder's state to train with (`config.moco`), or None."""
    return momentum.initial_state(config, params, batch_stats) if config.moco.enabled else None

  def initial_state(self, config: Any, model: nn.Module, optimizer: Any,
                    image_shape: tuple[int, ...], mesh: Mesh) -> train.TrainState:
    """A fresh train state on the mesh: the model's variables (seed `config.seed`), the
    optimiser's and, with `config.moco`, the momentum encoder's."""
    params, batch_stats = train.init_model(model, config.seed, image_shape, mesh)
    return train.create_state(params, batch_stats, optimizer, mesh,
                              momentum=self.initial_momentum(config, params, batch_stats))

  def loss_fn(self, config: Any, model: nn.Module, mesh: Mesh) -> LossFn:
    """The training loss of this method on its augmented views of a batch."""
    augment_views = augment.from_config(config, host_cropped=data.crops_on_host(config.data),
                                        per_view=True)
    return self.make_loss(self, config, model, augment_views, mesh)


def _probe_enabled(config: Any) -> bool:
  probe = config.get("probe")  # configs of older runs have none
  return bool(probe and probe.enabled)


def _contrastive_model(config: Any, num_classes: int) -> nn.Module:
  # The labels only define positives, and train the online probe where there is one.
  probed = _probe_enabled(config)
  return models.SupConModel(**models.encoder_kwargs(config.model), head=config.model.head,
                            proj_dim=config.model.proj_dim,
                            probe_classes=num_classes if probed else 0,
                            probe_stop_gradient=not probed or bool(config.probe.stop_gradient))


def _classifier_model(config: Any, num_classes: int) -> nn.Module:
  return models.CEModel(num_classes=num_classes, **models.encoder_kwargs(config.model))


def _apply(model: nn.Module, config: Any, params: Any, batch_stats: Any,
           augment_views: Callable, views: tuple[jax.Array, jax.Array]
           ) -> tuple[dict[str, jax.Array], Any]:
  """The model in training mode on the augmented `views` (augment.view_inputs: keys and
  uint8 images [N, ...]): (outputs, new batch_stats). With `config.encoder_chunk_size`, in
  chunks of that many views (ghost BatchNorm), each augmented inside its chunk."""
  return chunked.apply_in_chunks(model, {"params": params, "batch_stats": batch_stats}, views,
                                 config.encoder_chunk_size or None,
                                 prepare=lambda v: augment_views(*v))


def _contrastive_loss(method: Method, config: Any, model: nn.Module, augment_views: Callable,
                      mesh: Mesh) -> LossFn:
  """SupCon (with labels) or SimCLR (without) over the views of the whole global batch; with
  `config.moco.enabled`, also against the queue of a momentum encoder (momentum.py)."""
  loss_kwargs = dict(temperature=config.loss.temperature,
                     base_temperature=config.loss.base_temperature, variant=config.loss.variant,
                     contrast_mode=config.loss.contrast_mode, block_size=config.loss.block_size,
                     denominator_mode=config.loss.denominator_mode,
                     positives_cap=config.loss.positives_cap)

  probed = method.probed(config)
  small = method.small_views(config)
  if small:
    augment_small = augment.from_config(config, host_cropped=data.crops_on_host(config.data),
                                        per_view=True, small=True)

  def weighted(contrastive, out, labels):
    # The official code's joint objective; with the probe's stop-gradient, its cross-entropy
    # trains the probe alone.
    loss = config.loss.contrastive_weight * contrastive
    if probed:
      loss += config.loss.cross_entropy_weight * losses.cross_entropy_loss(out["logits"], labels)
    return loss

  def apply_all(params, batch_stats, batch, rng):
    # Each size is its own batch through the network; the outputs come back per image:
    # [B, views + small views, ...], the small views after the large ones.
    b, v = batch["image"].shape[0], method.views(config)
    views = augment.view_inputs(rng, batch["image"], v)  # view j of image i: row i * v + j
    out, batch_stats = _apply(model, config, params, batch_stats, augment_views, views)
    out = jax.tree.map(lambda y: y.reshape((b, v) + y.shape[1:]), out)
    if small:
      smalls = augment.view_inputs(jax.random.fold_in(rng, 1), batch.get("small", batch["image"]),
                                   small)
      more, batch_stats = _apply(model, config, params, batch_stats, augment_small, smalls)
      out = jax.tree.map(lambda y, m: jnp.concatenate([y, m.reshape((b, small) + m.shape[1:])],
                                                      axis=1), out, more)
    return out, batch_stats

  def loss_fn(params, carried, batch, rng):
    labels = batch["label"] if method.uses_labels else None
    view_labels = jnp.repeat(batch["label"], method.views(config) + small)
    flat = lambda out: jax.tree.map(lambda y: y.reshape((-1,) + y.shape[2:]), out)
    if not config.moco.enabled:
      out, batch_stats = apply_all(params, carried, batch, rng)
      loss = losses.sharded_supcon_loss(out["proj"], labels, mesh, **loss_kwargs)
      return weighted(loss, flat(out), view_labels), batch_stats
    batch_stats, state = carried
    out, batch_stats = apply_all(params, batch_stats, batch, rng)
    key_params = momentum.follow(state["params"], params, config.moco.momentum)
    # The same rng, so the same views (the keys): augmenting again costs less than keeping them.
    keys, key_stats = apply_all(key_params, state["batch_stats"], batch, rng)
    loss = losses.sharded_supcon_loss(
        out["proj"], labels, mesh, extra=state["queue"],
        extra_labels=None if labels is None else state["queue_labels"], **loss_kwargs)
    state = momentum.enqueue({**state, "params": key_params, "batch_stats": key_stats},
                             flat(keys)["proj"], view_labels)
    return weighted(loss, flat(out), view_labels), (batch_stats, state)

  return loss_fn


def _cross_entropy_loss(method: Method, config: Any, model: nn.Module,
                        augment_views: Callable, mesh: Mesh) -> LossFn:
  """The supervised baseline: the same encoder and augmentation, a linear classifier, CE."""
  del method, mesh  # one view per image; XLA shards the mean over the batch by itself

  def loss_fn(params, batch_stats, batch, rng):
    views = augment.view_inputs(rng, batch["image"], 1)
    out, batch_stats = _apply(model, config, params, batch_stats, augment_views, views)
    loss = losses.cross_entropy_loss(out["logits"], batch["label"],
                                     label_smoothing=config.loss.label_smoothing)
    return loss, batch_stats

  return loss_fn


METHODS: dict[str, Method] = {
    "supcon": Method("supcon", uses_labels=True, contrastive=True, evaluation=LINEAR,
                     build_model=_contrastive_model, make_loss=_contrastive_loss),
    "simclr": Method("simclr", uses_labels=False, contrastive=True, evaluation=LINEAR,
                     build_model=_contrastive_model, make_loss=_contrastive_loss),
    "ce": Method("ce", uses_labels=True, contrastive=False, evaluation=CLASSIFIER,
                 build_model=_classifier_model, make_loss=_cross_entropy_loss),
}


def get(name: str) -> Method:
  """The record of method `name` (ValueError listing the methods if there is none)."""
  one_of("method", name, METHODS)
  return METHODS[name]
