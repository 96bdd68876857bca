"""Where the recipes of `configs/` are: in a checkout, and in an installed package.

  supcon-train --config=$(python -m supcon_jax.recipes digits) --workdir=workdirs/digits
  python -m supcon_jax.recipes  # lists them

The repository keeps them at `configs/`; a wheel ships the same files as
`supcon_jax/configs/` (pyproject.toml maps one onto the other), and an editable install
reads the checkout's. Imports nothing heavy, so asking is instant.
"""

from __future__ import annotations

import os
import sys

_PACKAGE = os.path.dirname(os.path.abspath(__file__))


def directory() -> str:
  """The folder of the recipes (FileNotFoundError if neither location has one)."""
  for candidate in (os.path.join(_PACKAGE, "configs"),  # installed from a wheel
                    os.path.join(os.path.dirname(_PACKAGE), "configs")):  # a checkout
    if os.path.isdir(candidate):
      return candidate
  raise FileNotFoundError(f"no configs folder next to or inside {_PACKAGE}")


def names() -> list[str]:
  """The recipes' names (file names without .py), sorted."""
  return sorted(f[:-3] for f in os.listdir(directory())
                if f.endswith(".py") and not f.startswith(("_", ".")))


def path(name: str) -> str:
  """The file of recipe `name` (e.g. "digits"), for --config=; ValueError listing them."""
  if name not in names():
    raise ValueError(f"no recipe {name!r}; the recipes are {', '.join(names())}")
  return os.path.join(directory(), name + ".py")


def main(argv: list[str] | None = None) -> None:
  """Prints the path of the named recipe, or every recipe's name and path."""
  args = sys.argv[1:] if argv is None else argv
  try:
    if args:
      print(path(args[0]))
    else:
      print("\n".join(f"{name}\t{path(name)}" for name in names()))
  except (ValueError, OSError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  main()
