"""Fine-tuning: a trained encoder and a fresh linear classifier trained together with labels.

The paper's transfer protocol (its Section 5.3, after Kornblith et al. 2019) and the
semi-supervised one of SimCLR: the whole network, BatchNorm in training mode, cross-entropy on
one crop-and-flip view per image. The fine-tuning run is the cross-entropy method's run in
`<workdir>/finetune` under the config `run_config` derives, started from the trained encoder
(`from_encoder`) with a fresh classifier; so it checkpoints, resumes exactly and evaluates as
any training run does, and `load_encoder(<workdir>/finetune)` gives the fine-tuned model.
"""

from __future__ import annotations

from typing import Any

import jax
import ml_collections

from supcon_jax import train
from supcon_jax.trained import TrainedModel

SUBDIR = "finetune"  # of the stage's workdir
# The fine-tuning run's figures as the stage reports them beside the encoder's.
FIGURES = {"classifier_top1": "finetune_top1", "classifier_top5": "finetune_top5",
           "knn_top1": "finetune_knn_top1", "knn_full_top1": "finetune_knn_full_top1",
           "encoder_steps": "finetune_steps", "epochs": "finetune_epochs",
           "train_time_s": "finetune_train_time_s", "images_per_sec": "finetune_images_per_sec",
           "input_wait_fraction": "finetune_input_wait_fraction"}


def run_config(config: ml_collections.ConfigDict,
               encoder_config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The config of the fine-tuning run: `config` (its dataset, seed, checkpoints, logging and
  evaluation settings) as the cross-entropy method with the `finetune.*` batch, epochs,
  optimiser and augmentation, and the encoder's architecture and input normalisation (what
  its weights expect)."""
  c = ml_collections.ConfigDict(config.to_dict())
  f = config.finetune
  c.method = "ce"
  c.model = ml_collections.ConfigDict(encoder_config.model.to_dict())
  c.data.mean, c.data.std = tuple(encoder_config.data.mean), tuple(encoder_config.data.std)
  c.batch_size, c.epochs = f.batch_size, f.epochs
  c.optim = ml_collections.ConfigDict(f.optim.to_dict())
  c.augment.update(policy=f.augment, n_views=1, crop_scale=tuple(f.crop_scale), small_views=0)
  c.loss.label_smoothing = f.label_smoothing
  # Pre-training's switches that the cross-entropy run must not inherit.
  c.moco.enabled, c.probe.enabled = False, False
  c.time_budget_s, c.encoder_chunk_size = 0.0, 0
  return c


def from_encoder(state: train.TrainState, encoder: TrainedModel) -> train.TrainState:
  """`state`, a fresh cross-entropy model's, with the trained encoder's parameters and
  BatchNorm statistics in place of its own (the classifier stays fresh). The optimiser's state
  is that of the fresh parameters: zero moments, whatever their values."""
  def transplant(fresh: Any, trained: Any, what: str) -> Any:
    if jax.tree.structure(fresh) != jax.tree.structure(trained) or any(
        a.shape != b.shape for a, b in zip(jax.tree.leaves(fresh), jax.tree.leaves(trained))):
      raise ValueError(f"the encoder's {what} do not fit the fine-tuning model built from its "
                       "config (was the encoder's workdir changed after training?)")
    return jax.tree.map(lambda new, old: jax.device_put(new.astype(old.dtype), old.sharding),
                        trained, fresh)

  variables = encoder.variables
  params = {**state.params,
            "encoder": transplant(state.params["encoder"], variables["params"]["encoder"],
                                  "parameters")}
  stats = {**state.batch_stats,
           "encoder": transplant(state.batch_stats["encoder"],
                                 variables["batch_stats"]["encoder"], "BatchNorm statistics")}
  return state.replace(params=params, batch_stats=stats)


def figures(run_figures: dict[str, Any]) -> dict[str, Any]:
  """The fine-tuning run's figures under the names the stage reports them by."""
  return {FIGURES[k]: v for k, v in run_figures.items() if k in FIGURES}
