"""The named random streams: no two consumers ever draw the same key."""

import pathlib
import re

import jax
import numpy as np
import pytest

from supcon_jax import rngs

STEPS = 64  # steps, epochs, batches drawn per stream: more than the small salts of old


def _keys_as_consumers_draw_them(seed: int) -> dict[tuple, bytes]:
  """Every key the run derives in its first STEPS steps, epochs and batches, as each consumer
  derives it (rngs.draw at its step, epoch, ...; the robustness stage at severity, corruption
  and batch): {(stream, position): key bytes}."""
  keys = {}
  for name in rngs.STREAMS:
    stream = rngs.stream(seed, name)
    keys[name, "stream"] = stream
    for i in range(STEPS):
      keys[name, i] = rngs.draw(stream, i)
  for severity in range(1, 6):
    for corruption in range(3):
      for batch in range(4):
        keys["robustness", severity, corruption, batch] = rngs.draw(
            rngs.stream(seed, "robustness"), severity, corruption, batch)
  keys["seed", "key"] = jax.random.key(seed)  # nothing draws with the seed's own key
  return {k: np.asarray(jax.random.key_data(v)).tobytes() for k, v in keys.items()}


def _shared(keys: dict[tuple, bytes]) -> list[list[tuple]]:
  by_key = {}
  for where, key in keys.items():
    by_key.setdefault(key, []).append(where)
  return [where for where in by_key.values() if len(where) > 1]


@pytest.mark.parametrize("seed", [0, 1, 12345])
def test_no_two_consumers_draw_the_same_key(seed):
  assert _shared(_keys_as_consumers_draw_them(seed)) == []


def test_the_test_sees_two_streams_on_one_key(monkeypatch):
  # The rule broken as it was before the streams: "linear" salted with 1 is pretrain step 1.
  monkeypatch.setitem(rngs._IDS, "linear", rngs._IDS["pretrain"])
  shared = _shared(_keys_as_consumers_draw_them(0))
  assert [("pretrain", "stream"), ("linear", "stream")] in shared


def test_streams_are_deterministic_and_named():
  a, b = rngs.stream(7, "data"), rngs.stream(7, "data")
  assert np.array_equal(jax.random.key_data(a), jax.random.key_data(b))
  assert not np.array_equal(jax.random.key_data(a), jax.random.key_data(rngs.stream(8, "data")))
  with pytest.raises(ValueError, match="random stream='augment' is not one of"):
    rngs.stream(0, "augment")
  assert rngs.host_seed(7, "data") == rngs.host_seed(7, "data") < 2**31
  assert rngs.host_seed(7, "data") != rngs.host_seed(7, "eval_sample")


def test_only_the_streams_module_makes_keys_from_a_seed():
  # Every key of the package comes from a named stream, so the test above covers them all.
  package = pathlib.Path(rngs.__file__).parent
  pattern = re.compile(r"random\.(key|PRNGKey)\(")
  makers = [f"{path.relative_to(package)}:{n}" for path in sorted(package.rglob("*.py"))
            if path.name != "rngs.py"
            for n, line in enumerate(path.read_text().splitlines(), 1) if pattern.search(line)]
  assert makers == []
