"""The transfer suite (configs/transfer.py) and its table (python -m supcon_jax.report
--transfer-suite / --transfer).

Oracles independent of the code under test: the TFDS builders' own features (class counts,
which builders exist; no data needed), the TFDS catalog's split sizes typed below from
tensorflow.org/datasets/catalog, and each run's results.json read back as plain JSON for the
table's cells.
"""

import json
import os
import re

import pytest

from supcon_jax import config as config_lib
from supcon_jax import experiment, report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE = os.path.join(ROOT, "configs", "transfer.py")

# The catalog's examples per split of the builders the recipe names.
CATALOG = {
    "food101": {"train": 75_750, "validation": 25_250},
    "cifar10": {"train": 50_000, "test": 10_000},
    "cifar100": {"train": 50_000, "test": 10_000},
    "sun397/standard-part1-120k": {"train": 19_850, "test": 19_850},
    "cars196": {"train": 8_144, "test": 8_041},
    "dtd": {"train": 1_880, "validation": 1_880, "test": 1_880},
    "oxford_iiit_pet": {"train": 3_680, "test": 3_669},
    "caltech101": {"train": 3_060, "test": 6_084},
    "oxford_flowers102": {"train": 1_020, "validation": 1_020, "test": 6_149},
}


RECIPE_MODULE = config_lib.load_module(RECIPE)
DATASETS = RECIPE_MODULE.DATASETS


@pytest.mark.parametrize("name", [*DATASETS, "folder"])
def test_every_dataset_loads_validates_and_matches_the_tfds_catalog(name, tmp_path):
  c = config_lib.load_config_file(RECIPE, name)
  assert (c.stage, c.data.image_size, c.finetune.optim.nesterov) == ("finetune", 224, True)
  if name == "folder":
    c.data.train_dir = str(tmp_path)
    experiment.validate(c)
    return
  experiment.validate(c)
  import tensorflow_datasets as tfds
  features = tfds.builder(c.data.name).info.features  # the builder's code, no data
  assert features["label"].num_classes == c.data.num_classes
  splits = CATALOG[c.data.name]
  train_parts = c.data.train_split.split("+")
  assert set(train_parts) <= set(splits) and c.data.eval_split in splits
  assert c.data.eval_split not in train_parts
  assert sum(splits[s] for s in train_parts) == DATASETS[name].train_examples
  # 20,000 fine-tuning steps of batch 256 on every dataset (SimCLR's budget), as the
  # stage counts them: the epochs times the full batches of the training split.
  steps = int(c.finetune.epochs * (DATASETS[name].train_examples // c.finetune.batch_size))
  assert steps == 20_000
  assert c.data.host_resize == (features["image"].shape[:2] == (None, None))


@pytest.mark.parametrize("name,why", [
    ("birdsnap", "TFDS has no Birdsnap"),
    ("fgvc_aircraft", "TFDS has no FGVC Aircraft at its resolution"),
    ("voc2007", "PASCAL VOC2007 (TFDS voc/2007) is multi-label")])
def test_the_datasets_tfds_cannot_serve_fail_saying_why_and_what_instead(name, why):
  with pytest.raises(ValueError, match=re.escape(f"configs/transfer.py:{name}: {why}")) as e:
    config_lib.load_config_file(RECIPE, name)
  assert "configs/transfer.py:folder" in str(e.value)
  import tensorflow_datasets as tfds
  if name == "voc2007":  # TFDS has it, with a set of labels per image
    features = tfds.builder("voc/2007").info.features
    assert "label" not in features and "labels" in features
    return
  with pytest.raises(tfds.core.DatasetNotFoundError):
    tfds.builder(name)
  if name == "fgvc_aircraft":  # only the decathlon's 72-px copy
    decathlon = tfds.builder("visual_domain_decathlon/aircraft")
    assert decathlon.info.features["label"].num_classes == 100


@pytest.mark.parametrize("arg", ["help", "", "imagenet"])
def test_help_and_an_unknown_name_list_every_name(arg):
  with pytest.raises(ValueError, match="configs/transfer.py:NAME, NAME one of") as e:
    config_lib.load_config_file(RECIPE, arg) if arg else RECIPE_MODULE.get_config()
  assert all(name in str(e.value) for name in RECIPE_MODULE.ORDER)
  assert ("no dataset 'imagenet'" in str(e.value)) == (arg == "imagenet")


def test_the_recipe_orders_the_paper_s_twelve():
  order = RECIPE_MODULE.ORDER
  assert len(order) == 12 and set(order) == set(DATASETS) | set(RECIPE_MODULE.UNAVAILABLE)
  assert report.transfer_datasets() == order  # the table reads the same list
  assert [n for n in order if n in DATASETS] == list(DATASETS)


MOCK_EXAMPLES = 32  # per split


def _tiny(name, encoder_workdir, stage):
  """The recipe for `name`, shrunk: 16 px, batches of 16, 2 steps of training."""
  c = config_lib.load_config_file(RECIPE, name)
  c.stage = stage
  c.linear.encoder_workdir = encoder_workdir
  c.data.update(image_size=16, shuffle_buffer=64)
  c.batch_size = 16  # the evaluation passes' batch
  c.finetune.update(batch_size=16, epochs=1.0)
  c.linear.update(batch_size=16, epochs=1.0)
  c.knn.update(num_train=MOCK_EXAMPLES, k=5)
  c.update(checkpoint_every_steps=2, log_every_steps=1, embedding_plot=False,
           tensorboard=False)
  return c


@pytest.fixture(scope="module")
def suite(tiny_runs, tmp_path_factory):
  """A suite of the tiny digits encoder's transfers on TFDS mock data: dtd fine-tuned,
  caltech101 linearly evaluated, each in the workdir named as the recipe names it."""
  import tensorflow_datasets as tfds
  encoder = str(tiny_runs[0] / "supcon")
  root = tmp_path_factory.mktemp("supcon_transfer")
  with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES):
    for name, stage in (("dtd", "finetune"), ("caltech101", "linear")):
      experiment.train_and_evaluate(_tiny(name, encoder, stage), str(root / name))
  return root, encoder


def _results(workdir):
  return json.loads((workdir / "results.json").read_text())


def test_both_stages_run_a_suite_dataset_from_another_workdir_s_encoder(suite):
  root, encoder = suite
  tuned, linear = _results(root / "dtd"), _results(root / "caltech101")
  assert tuned["encoder_workdir"] == linear["encoder_workdir"] == encoder
  assert tuned["finetune_steps"] == 2 and 0 <= tuned["finetune_top1"] <= 100
  assert "linear_top1" not in tuned and "finetune_top1" not in linear
  assert 0 <= linear["linear_top1"] <= 100
  config = json.loads((root / "dtd" / "finetune" / "config.json").read_text())
  assert (config["data"]["name"], config["data"]["num_classes"]) == ("dtd", 47)
  assert config["data"]["train_split"] == "train+validation"


def _table(text):
  """(header, {(encoder, evaluation): cells}) of the Markdown table in `text`."""
  lines = [line for line in text.splitlines() if line.startswith("|")]
  split = lambda line: [cell.strip() for cell in line.strip("|").split("|")]
  header = split(lines[0])
  return header, {tuple(row[:2]): row[2:] for row in map(split, lines[2:])}


def test_the_table_has_a_column_per_dataset_in_the_paper_s_order_and_the_runs_figures(
    suite, capsys):
  root, _ = suite
  tuned = f"{_results(root / 'dtd')['finetune_top1']:.1f}"
  linear = f"{_results(root / 'caltech101')['linear_top1']:.1f}"
  report.main(["--transfer-suite", f"supcon={root}"])
  header, rows = _table(capsys.readouterr().out)
  assert header == ["encoder", "evaluation", "dtd", "caltech101"]  # Table 4's, not sorted
  assert rows == {("supcon", "linear"): ["–", linear], ("supcon", "fine-tuned"): [tuned, "–"]}

  # One by one, with a workdir that has no results.json yet: its column is all "–".
  report.main(["--encoder", "tiny", "--transfer", f"caltech101={root / 'caltech101'}",
               "--transfer", f"food101={root / 'not_yet'}", "--transfer", f"dtd={root / 'dtd'}"])
  header, rows = _table(capsys.readouterr().out)
  assert header == ["encoder", "evaluation", "food101", "dtd", "caltech101"]
  assert rows == {("tiny", "linear"): ["–", "–", linear],
                  ("tiny", "fine-tuned"): ["–", tuned, "–"]}


def test_a_suite_folder_without_workdirs_is_an_error(tmp_path):
  (tmp_path / "food101").mkdir()
  with pytest.raises(SystemExit):
    report.main(["--transfer-suite", str(tmp_path)])
