"""An evaluation folder that is, holds or lies inside the training folder gets a warning."""

import logging
import os

import numpy as np
import pytest
from PIL import Image

from supcon_jax import config as config_lib
from supcon_jax.data import folder


def _images(root, classes=("a", "b")):
  for name in classes:
    (root / name).mkdir(parents=True)
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(root / name / "0.png")
  return root


def _data(train_dir, eval_dir):
  c = config_lib.base_config().data
  c.source, c.train_dir, c.eval_dir = "folder", str(train_dir), str(eval_dir)
  return c


def _warnings(caplog):
  return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_the_same_folder_through_a_link_is_named_in_a_warning(tmp_path, caplog):
  train = _images(tmp_path / "train")
  os.symlink(train, tmp_path / "test")
  with caplog.at_level(logging.WARNING):
    files = folder.folder_files(_data(train, tmp_path / "test"), "eval")
  assert len(files) == 2  # a warning, not an error: the run goes on
  assert _warnings(caplog) == [
      f"data.eval_dir {tmp_path / 'test'} is the same folder as data.train_dir {train}: the "
      "evaluation may score images the model trained on"]


@pytest.mark.parametrize("eval_inside", [True, False])
def test_nested_folders_are_named_in_a_warning(tmp_path, caplog, eval_inside):
  outer = _images(tmp_path / "data", classes=("a", "b", "test"))
  inner = outer / "test"
  _images(inner)
  train, evaluation = (outer, inner) if eval_inside else (inner, outer)
  with caplog.at_level(logging.WARNING), pytest.raises(ValueError, match="different classes"):
    folder.folder_files(_data(train, evaluation), "eval")
  how = "is inside" if eval_inside else "contains"
  assert _warnings(caplog) == [
      f"data.eval_dir {evaluation} {how} data.train_dir {train}: the evaluation may score "
      "images the model trained on"]


def test_separate_folders_get_no_warning(tmp_path, caplog):
  train, evaluation = _images(tmp_path / "train"), _images(tmp_path / "train_2")  # a shared prefix
  with caplog.at_level(logging.WARNING):
    folder.folder_files(_data(train, evaluation), "eval")
  assert not _warnings(caplog)
