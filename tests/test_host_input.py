"""benchmarks/host_input.py's table: medians over rounds, per-CPU rates and the ratios to the
reference pipeline (the figures below worked out by hand)."""

from benchmarks import host_input


def _runs(*rates):
  return [{"samples_per_s": r, "cpu_ms_per_sample": 1000.0 / r} for r in rates]


def test_the_table_gives_medians_and_every_ratio_to_the_reference():
  rows = {("f90856e", 2): _runs(900, 1000, 5000), ("f90856e", 1): _runs(500, 400, 600),
          ("this checkout", 2): _runs(1200, 1100, 1300), ("this checkout", 1): _runs(700),
          (host_input.FLOOR, 2): _runs(2000), (host_input.FLOOR, 1): _runs(1000, 1100, 1200)}
  lines = host_input._table(rows).splitlines()
  # Each column its own median: 1,000 samples/s; CPU ms of 1.11, 1.00 and 0.20: 1.00.
  assert "| f90856e | 2 | 1,000 | 500 | 1.00 |" in lines
  assert "| this checkout | 1 | 700 | 700 | 1.43 |" in lines
  assert lines[-4:] == ["| ratio this checkout / f90856e | 2 | 1.20x | | |",
                        "| ratio this checkout / f90856e | 1 | 1.40x | | |",
                        f"| ratio {host_input.FLOOR} / f90856e | 2 | 2.00x | | |",
                        f"| ratio {host_input.FLOOR} / f90856e | 1 | 2.20x | | |"]


def test_without_a_reference_the_floor_is_compared_with_this_checkout():
  rows = {("this checkout", 1): _runs(500), (host_input.FLOOR, 1): _runs(1500)}
  assert host_input._table(rows).splitlines()[-1] == \
      f"| ratio {host_input.FLOOR} / this checkout | 1 | 3.00x | | |"
