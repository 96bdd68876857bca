"""kNN over the whole training split (knn.full_bank), in blocks: against a float64 NumPy
reference written from the definition (InstDisc's weighted kNN), and in results.json."""

import json
import re
import shutil

import numpy as np
import pytest

from supcon_jax import config as config_lib
from supcon_jax import data, evaluate, experiment, results, sharding, trained, validation
from tests.helpers import tiny_runs_config


def _reference(bank, bank_y, query, *, k, temperature, num_classes, weighted=True, cosine=True):
  """Weighted kNN from its definition, in float64: each query's k bank rows of highest cosine
  similarity vote for their class with weight exp(similarity / temperature); the class with
  the most votes wins. Also the vote margins, for checking that no tie decides anything.
  (weighted=False, cosine=False: the rules the test's data must tell apart.)"""
  unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True) if cosine else x
  sim = unit(np.asarray(query, np.float64)) @ unit(np.asarray(bank, np.float64)).T
  preds, gaps, margins = [], [], []
  for s in sim:
    order = np.argsort(-s)
    votes = np.zeros(num_classes)
    # Dot products of unnormalised rows would overflow exp: shifted, the same argmax.
    shift = 0.0 if cosine else s[order[0]]
    for j in order[:k]:
      votes[bank_y[j]] += np.exp((s[j] - shift) / temperature) if weighted else 1.0
    preds.append(int(np.argmax(votes)))
    ranked = np.sort(votes)[::-1]
    margins.append((ranked[0] - ranked[1]) / ranked[0])
    gaps.append(s[order[k - 1]] - s[order[k]] if k < len(s) else np.inf)
  return np.array(preds), np.array(gaps), np.array(margins)


def _data(n, q, dim=8, classes=5, seed=0):
  """Clustered features whose rows have norms from 0.1 to 10 (cosine must ignore them)."""
  r = np.random.default_rng(seed)
  centres = r.normal(size=(classes, dim))
  y = r.integers(0, classes, n + q)
  x = (centres[y] + 1.5 * r.normal(size=(n + q, dim))) * r.uniform(0.1, 10, (n + q, 1))
  x = x.astype(np.float32)
  return x[:n], y[:n], x[n:], y[n:]


def _parts(bank, bank_y, size):
  """The bank as a pass over a split hands it over: batches of `size` rows, the last short."""
  return [(bank[i:i + size], bank_y[i:i + size]) for i in range(0, len(bank), size)]


# Sizes that no block size divides (ragged last blocks of bank and queries), k larger than a
# bank block, k equal to the whole bank, one query block and several; the default temperature
# and warmer ones, under which the k-th neighbour's vote decides some queries.
CASES = [
    dict(n=103, q=37, k=40, temperature=0.07, block_size=16, query_block_size=10, part=7),
    dict(n=103, q=37, k=17, temperature=1.0, block_size=16, query_block_size=12, part=5),
    dict(n=103, q=37, k=5, temperature=0.07, block_size=24, query_block_size=None, part=50),
    dict(n=103, q=37, k=103, temperature=0.5, block_size=16, query_block_size=64, part=103),
    dict(n=250, q=61, k=200, temperature=0.07, block_size=48, query_block_size=25, part=33),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"n{c['n']}-k{c['k']}-b{c['block_size']}")
def test_blocked_knn_matches_the_definition(case):
  n, q, k, t = case["n"], case["q"], case["k"], case["temperature"]
  bank, bank_y, query, _ = _data(n, q, seed=n + k)
  want, gaps, margins = _reference(bank, bank_y, query, k=k, temperature=t, num_classes=5)
  # No tie decides the answer: the k-th and (k+1)-th neighbours, and the two best classes'
  # votes, are far apart next to float32's rounding.
  assert gaps.min() > 1e-5 and margins.min() > 1e-4, (gaps.min(), margins.min())
  got = evaluate.knn_predictions(_parts(bank, bank_y, case["part"]), query, k=k, temperature=t,
                                 num_classes=5, block_size=case["block_size"],
                                 query_block_size=case["query_block_size"])
  assert got.shape == (q,)
  np.testing.assert_array_equal(got, want)


def _slips_caught(case):
  """The names of the slips that change some prediction of `case` (see below)."""
  n, k, b = case["n"], case["k"], case["block_size"]
  bank, bank_y, query, _ = _data(n, case["q"], seed=n + k)
  settings = {"k": k, "temperature": case["temperature"], "num_classes": 5}

  def ref(rows=slice(None), **changes):
    return _reference(bank[rows], bank_y[rows], query, **{**settings, **changes})[0]

  want, last = ref(), (n - 1) // b * b
  slips = {"k - 1": ref(k=k - 1), "unweighted": ref(weighted=False),
           "not cosine": ref(cosine=False),
           "first block lost": ref(slice(b, None), k=min(k, n - b)),
           "last block lost": ref(slice(last), k=min(k, last))}
  if k < n:
    slips["k + 1"] = ref(k=k + 1)
  return {name for name, other in slips.items() if (other != want).any()}


def test_the_cases_tell_the_rule_from_its_likely_mistakes():
  """Each plausible slip changes some prediction of some case above, so that test would
  catch it: k off by one, unweighted votes, dot products instead of cosines, a bank block
  lost in the merge (the first, or the ragged last)."""
  caught = set().union(*map(_slips_caught, CASES))
  assert caught == {"k - 1", "k + 1", "unweighted", "not cosine", "first block lost",
                    "last block lost"}


def test_a_bank_smaller_than_k_is_an_error():
  bank, bank_y, query, _ = _data(30, 5)
  with pytest.raises(ValueError, match="knn.full_k=31 needs 1 <= k <= the 30 images"):
    evaluate.knn_predictions(_parts(bank, bank_y, 8), query, k=31, temperature=0.07,
                             num_classes=5, block_size=16)


def test_full_bank_knn_reaches_results_json(tiny_runs, tmp_path):
  """A linear stage on a copy of the tiny supcon run: knn_full_top1 is the kNN over all 1,437
  training digits with full_k and full_temperature, beside the sampled knn_top1, and shows
  in the results table."""
  workdir = tmp_path / "supcon"
  shutil.copytree(tiny_runs[0] / "supcon", workdir)
  config = tiny_runs_config("supcon")
  config.stage = "linear"
  config.robustness.enabled = False
  config.knn.update(full_bank=True, full_k=30, full_temperature=0.5, block_size=100)
  got = experiment.train_and_evaluate(config, str(workdir))
  saved = json.loads((workdir / "results.json").read_text())
  assert saved["knn_full_top1"] == got["knn_full_top1"]
  assert saved["knn_top1"] == tiny_runs[1]["supcon"]["knn_top1"]  # the sampled one, unchanged

  # The reference: r of every training and evaluation digit, encoded at once.
  mesh = sharding.make_mesh()
  model = trained.load_encoder(str(workdir)).on(mesh)
  split = lambda name: evaluate.encode(model, data.make_source(
      config.data, split=name, global_batch=64, mesh=mesh, seed=0).eval_batches())
  bank, query = split("train"), split("eval")
  assert len(bank["label"]) == 1437
  want, _, _ = _reference(bank["repr"], bank["label"], query["repr"], k=30, temperature=0.5,
                          num_classes=10)
  # Within one query of it: float32 against float64 on a trained model's r, ties not avoided.
  assert abs(saved["knn_full_top1"] - 100 * np.mean(want == query["label"])) <= (
      100 / len(want) + 1e-9)
  table = results.results_table({"supcon": saved})
  assert "full-bank kNN top-1" in table and f"| {saved['knn_full_top1']:.2f} |" in table


@pytest.mark.parametrize("field,value", [("full_k", 0), ("full_temperature", 0.0),
                                         ("block_size", 0)])
def test_bad_full_bank_fields_fail_validation_naming_the_field(field, value):
  config = config_lib.base_config()
  config.knn[field] = value
  with pytest.raises(ValueError, match=re.escape(f"config.knn.{field}={value!r} must be > 0")):
    experiment.validate(config)


def test_a_full_k_beyond_the_training_split_stops_before_any_work():
  config = config_lib.base_config()
  config.knn.update(full_bank=True, full_k=200)
  validation.check_dataset(config, 200, ("knn.k",))
  validation.check_dataset(config, 150, ())  # a stage without kNN
  with pytest.raises(ValueError, match=re.escape("config.knn.full_k=200 is more than the 150 "
                                                 "training images")):
    validation.check_dataset(config, 150, ("knn.k",))
  config.knn.full_bank = False
  validation.check_dataset(config, 150, ("knn.k",))  # k only matters when the option is on
