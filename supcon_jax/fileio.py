"""Files written so that a reader never sees half of one: JSON, text, bytes and PNG pictures,
on a local disk or a remote file system (gs://). A leaf: it imports nothing of the package.
"""

from __future__ import annotations

import io
import json
from typing import Any

from etils import epath


def write_atomic(path: str, content: str | bytes) -> None:
  """Writes `<path>.tmp`, then renames it to `path` (the parent folder is created)."""
  path = epath.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.parent / (path.name + ".tmp")
  if isinstance(content, bytes):
    tmp.write_bytes(content)
  else:
    tmp.write_text(content)
  tmp.replace(path)


def write_json(path: str, obj: Any) -> None:
  """`obj` as indented JSON with sorted keys, written atomically."""
  write_atomic(path, json.dumps(obj, indent=2, sort_keys=True))


def read_json(path: str) -> Any:
  """The JSON object in the file `path`."""
  return json.loads(epath.Path(path).read_text())


def save_png(fig: Any, path: str) -> None:
  """A matplotlib figure, laid out, as a PNG at `path`, written atomically."""
  fig.tight_layout()
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png")
  write_atomic(path, buffer.getvalue())
