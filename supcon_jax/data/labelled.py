"""Label fractions: which training examples a stage that trains with labels on top of an
encoder (the linear classifier, fine-tuning) sees, under data.label_fraction or
data.label_list. Pre-training, the kNN memory bank and evaluation always read whole splits.

The fraction's rule (`balanced`): for each class c in index order, of its n_c examples
(in the split's fixed order: a folder's sorted listing, a TFDS split's record order, the
digits' order) keep k_c = max(1, floor(f * n_c + 1/2)), i.e. f * n_c rounded half up and at
least one: the first k_c of a permutation of them drawn by one NumPy RandomState, seeded by
`rngs.host_seed(seed, "label_subset")` and drawing for the classes in turn. So the subset
is a pure function of (the run's seed, the split's listing and its labels): the same on every
host and on every resume. It is chosen on the dataset's labels, before data.label_noise
changes any, so a noisy run keeps the clean run's examples.

A list (data.label_list, e.g. SimCLR's ImageNet 1% / 10% files): one name a line; each names
an example of the training split by its name (`LabelSubset.names`): a folder's file by its
path under the root or its base name (where no other file shares it), a TFDS record by its
`file_name` or `id` feature, and otherwise an example by its index in the split.

The chosen examples' names are written to `<workdir>/label_subset_<tag>.txt` (`record`), one
a line: a list data.label_list accepts. A later run of the same stage in that workdir must
choose the same examples, or it stops (its classifier would resume on another subset).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import os
import re
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from etils import epath

from supcon_jax import fileio, rngs

NAME_FEATURES = ("file_name", "id")  # a TFDS record's name, the first of these it has
_SHOWN = 5  # names quoted in an error


@dataclasses.dataclass(frozen=True)
class LabelSubset:
  """The labelled training examples: their positions in the split and their names."""
  indices: np.ndarray  # sorted positions in the split's fixed order
  names: tuple[str, ...]  # the chosen examples' names, in that order
  total: int  # examples in the whole split
  fraction: float  # data.label_fraction, or the fraction of the split a list names
  label_list: str = ""  # data.label_list, where a list chose them

  @property
  def rule(self) -> str:
    """The config field that chose them, e.g. "data.label_fraction=0.1"."""
    if self.label_list:
      return f"data.label_list={self.label_list}"
    return f"data.label_fraction={self.fraction:g}"

  def text(self) -> str:
    """The workdir's record: one name a line."""
    return "".join(name + "\n" for name in self.names)

  def digest(self) -> str:
    """A short hash of the names, for a checkpoint's identity."""
    return hashlib.sha256(self.text().encode()).hexdigest()[:16]


def in_force(data_config: Any) -> bool:
  """Whether data_config keeps only some training labels (a fraction < 1, or a list)."""
  return bool(data_config.get("label_list", "")) or data_config.get("label_fraction", 1.0) < 1


def tag(data_config: Any) -> str:
  """A name for the rule in force ("" for every label): "fraction0.1", "list_1percent"; it
  names the stage's directory and the workdir's record, so that subsets do not mix."""
  if data_config.get("label_list", ""):
    stem = os.path.splitext(os.path.basename(str(data_config.label_list).rstrip("/")))[0]
    return "list_" + re.sub(r"[^A-Za-z0-9._-]", "_", stem)
  if in_force(data_config):
    return f"fraction{data_config.label_fraction:g}"
  return ""


def stage_dir(workdir: str, stage: str, data_config: Any) -> str:
  """`<workdir>/<stage>`, or `<workdir>/<stage>_<tag>` under a label subset: a stage trained
  on other labels keeps its checkpoints apart (a 10% linear classifier never resumes the
  one stage "all" trained on every label)."""
  subset_tag = tag(data_config)
  return os.path.join(workdir, f"{stage}_{subset_tag}" if subset_tag else stage)


def balanced(labels: Sequence[int], fraction: float, seed: int, num_classes: int) -> np.ndarray:
  """Sorted positions of a class-balanced `fraction` of the examples (the module's rule)."""
  labels = np.asarray(labels)
  rng = np.random.RandomState(rngs.host_seed(seed, "label_subset"))
  kept = [np.zeros(0, np.int64)]
  for c in range(num_classes):
    members = np.flatnonzero(labels == c)
    k = max(1, math.floor(fraction * len(members) + 0.5))
    kept.append(members[rng.permutation(len(members))[:k]])
  return np.sort(np.concatenate(kept))


def read_list(path: str) -> list[str]:
  """The names a data.label_list file lists: one a line, blank lines skipped, surrounding
  spaces dropped (a file written on Windows has "\\r\\n" endings)."""
  try:
    text = epath.Path(path).read_text()
  except OSError as e:
    raise ValueError(f"config.data.label_list={path!r} cannot be read: {e}") from e
  names = [line.strip() for line in text.splitlines() if line.strip()]
  if not names:
    raise ValueError(f"config.data.label_list={path!r} lists no examples")
  return names


def _quote(names: Sequence[str]) -> str:
  shown = ", ".join(repr(n) for n in names[:_SHOWN])
  return shown + (", ..." if len(names) > _SHOWN else "")


def match(listed: Sequence[str], names: Sequence[str], aliases: Sequence[str] = (), *,
          what: str, path: str) -> np.ndarray:
  """Sorted positions of the examples `listed` names: by name, else by alias (a folder's
  base names) where one example alone has it. ValueError naming the first few listed names
  that are in no example of the split (or in several)."""
  by_name = {name.strip(): i for i, name in enumerate(names)}
  by_alias: dict[str, list[int]] = {}
  for i, alias in enumerate(aliases):
    by_alias.setdefault(alias.strip(), []).append(i)
  found, missing, ambiguous = set(), [], []
  for name in dict.fromkeys(listed):  # a name listed twice counts once
    if name in by_name:
      found.add(by_name[name])
    elif len(by_alias.get(name, ())) == 1:
      found.add(by_alias[name][0])
    elif name in by_alias:
      ambiguous.append(name)
    else:
      missing.append(name)
  if missing:
    raise ValueError(f"config.data.label_list={path!r}: {len(missing)} of its {len(listed)} "
                     f"names are not in the training split of {what}: {_quote(missing)}")
  if ambiguous:
    raise ValueError(f"config.data.label_list={path!r}: {_quote(ambiguous)} name several "
                     f"files of {what}; list them by their path under the folder instead")
  return np.asarray(sorted(found), np.int64)


def choose(data_config: Any, *, labels: Sequence[int], names: Sequence[str] | None = None,
           aliases: Sequence[str] = (), seed: int, what: str) -> LabelSubset:
  """The labelled examples of a training split of `labels` (the dataset's, in its fixed
  order) under `data_config`: its balanced fraction, or the examples its list names.
  `names`: the examples' names (None: their indices), `aliases` other names they answer
  to; `what` names the dataset in messages."""
  labels = np.asarray(labels)
  names = [str(i) for i in range(len(labels))] if names is None else [n.strip() for n in names]
  path = str(data_config.label_list)
  if path:
    indices = match(read_list(path), names, aliases, what=what, path=path)
    fraction = len(indices) / max(len(labels), 1)
  else:
    fraction = float(data_config.label_fraction)
    indices = balanced(labels, fraction, seed, data_config.num_classes)
  subset = LabelSubset(indices, tuple(names[i] for i in indices), len(labels), fraction, path)
  logging.info("labelled examples: %d of the %d training examples of %s (%s)", len(indices),
               len(labels), what, subset.rule)
  return subset


def record(workdir: str, data_config: Any, subset: LabelSubset) -> str:
  """Writes the subset's names to `<workdir>/label_subset_<tag>.txt` (atomically, by host 0)
  or, where an earlier run wrote that file, checks that it lists the same examples: a
  resumed stage must train on the same subset. ValueError where it does not (the seed, the
  split or the list changed). Returns the file's path."""
  path = os.path.join(workdir, f"label_subset_{tag(data_config)}.txt")
  text = subset.text()
  if epath.Path(path).exists():
    before = epath.Path(path).read_text()
    if before != text:
      earlier = before.splitlines()
      differ = len(set(earlier) ^ set(subset.names))
      raise ValueError(
          f"{path} lists the {len(earlier)} labelled examples an earlier run in this workdir "
          f"trained on, but {subset.rule} (with seed and split as configured now) chooses "
          f"{len(subset.names)} ({differ} names differ): its classifier would resume on "
          "another subset. Use a new workdir (linear.encoder_workdir can name this one for its "
          f"encoder), or delete {path} and the directories of the stages trained on it "
          f"({stage_dir(workdir, 'linear', data_config)}, ...) to start over")
    logging.info("labelled examples: the same %d as %s", len(subset.names), path)
  elif jax.process_index() == 0:
    fileio.write_atomic(path, text)
  return path


def figures(source: Any) -> dict[str, Any]:
  """What results.json records of the labels a classifier trained on, where only some were
  (none otherwise): label_fraction (of the training split; a list's is the fraction it
  names), labelled_examples, label_list (its path, "" for none)."""
  subset = getattr(source, "labelled", None)
  if subset is None:
    return {}
  return {"label_fraction": subset.fraction, "labelled_examples": source.num_examples,
          "label_list": subset.label_list}
