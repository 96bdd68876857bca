"""PyTorch .pth files: reading a state_dict safely, writing one. torch is imported here
only, when a file is read or written, so that nothing else of the package needs it.
"""

from __future__ import annotations

import argparse
import io
import pickle
import re
from typing import Any

import numpy as np

from supcon_jax import fileio


def require_torch() -> Any:
  """The torch module, or ImportError saying that reading or writing .pth files needs it."""
  try:
    import torch  # here: only .pth files need it, and it takes seconds to import
  except ImportError as e:
    raise ImportError("reading or writing PyTorch .pth files needs the package torch "
                      "(pip install torch; the CPU wheel suffices)") from e
  return torch


def read(path: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
  """(the state_dict of the .pth file `path`, keyed as saved, floats as float32 numpy; the
  checkpoint's other entries, e.g. the reference's `opt` and `epoch`, or {}).

  Tensors and plain containers only (torch.load's weights_only): a downloaded file runs no
  code. argparse.Namespace is let through: the reference saves its options as one, and it
  is a plain attribute bag.
  """
  torch = require_torch()
  try:
    with torch.serialization.safe_globals([argparse.Namespace]):
      saved = torch.load(path, map_location="cpu", weights_only=True)
  except (pickle.UnpicklingError, RuntimeError, EOFError) as e:
    raise ValueError(f"cannot read {path} as a PyTorch weights file: {_why(str(e))}") from e
  meta: dict[str, Any] = {}
  for wrapper in ("model", "state_dict"):  # the reference's {'model': ..., 'opt': ...}
    if isinstance(saved, dict) and isinstance(saved.get(wrapper), dict):
      meta = {k: v for k, v in saved.items() if k != wrapper}
      saved = saved[wrapper]
      break
  if not isinstance(saved, dict) or not saved:
    raise ValueError(f"{path} holds no state_dict (a dict of tensors, or a checkpoint with "
                     f"one under 'model' or 'state_dict'): it holds a {type(saved).__name__}")
  state_dict = {}
  for key, value in saved.items():
    if not torch.is_tensor(value):
      raise ValueError(f"{path}: {key} is a {type(value).__name__}, not a tensor")
    value = value.detach().cpu()
    state_dict[key] = (value.float() if value.is_floating_point() else value).numpy()
  return state_dict, meta


def _why(message: str) -> str:
  """The gist of torch.load's long message."""
  refused = re.search(r"Unsupported global: GLOBAL (\S+)", message)
  if refused:
    return (f"it holds a {refused.group(1)}, not only tensors and plain containers, and "
            "weights-only loading runs no code from a file")
  unpickler = re.search(r"WeightsUnpickler error:\s*(.+?)(\n\n|$)", message, re.DOTALL)
  return (unpickler.group(1) if unpickler else message.strip().splitlines()[0]).strip()


def save(state_dict: dict[str, np.ndarray], path: str) -> None:
  """`state_dict` as torch tensors in a .pth file, written atomically."""
  torch = require_torch()
  buffer = io.BytesIO()
  torch.save({k: torch.from_numpy(np.array(v)) for k, v in state_dict.items()},  # writable
             buffer)
  fileio.write_atomic(path, buffer.getvalue())
