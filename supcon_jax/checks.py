"""The one check for "a value from a fixed list", shared by the modules that own such lists.

Each list of choices lives in the module that implements it (`resnet.DEPTHS`,
`augment.POLICIES`, `optim.OPTIMIZERS`, ...); that module checks its own arguments with
`one_of`, and `config.validate` checks the config field against the same list, so the two
can never disagree.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any


def one_of(name: str, value: Any, valid: Collection[Any]) -> None:
  """ValueError naming `name` and listing `valid` unless `value` is one of them."""
  if value not in valid:
    raise ValueError(f"{name}={value!r} is not one of {', '.join(map(str, valid))}")
