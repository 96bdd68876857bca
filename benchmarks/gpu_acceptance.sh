#!/usr/bin/env bash
# The whole GPU acceptance in one command, for a fresh GPU machine that has only this working
# tree and its carried folders. Results go to $OUT (default ./gpu_out).
#
#   benchmarks/gpu_acceptance.sh prepare TARBALL  # beforehand, here: fetch the wheels, copy the data
#   benchmarks/gpu_acceptance.sh speed            # the reference suite: speed.json, performance.md
#   benchmarks/gpu_acceptance.sh cifar10 [METHOD] # the 10-minute CIFAR-10 recipe (supcon|simclr|ce)
#   benchmarks/gpu_acceptance.sh all [METHOD]     # both: about 19 minutes, so two device calls
#
# `prepare` puts the clu and ml_collections wheels (Python 3.12, pure Python) into .whl/ and the
# CIFAR-10 tarball TARBALL (class folders of JPEGs) into .data/carry/; carry both (device `carry: [".whl", ".data/carry"]`).
# On the GPU machine the script installs what is missing from .whl/ into /tmp/site, unpacks
# the tarball into /tmp/cifar10 and runs. With DATA_DIR set, that image folder is used instead.
#
# TINY=1 runs every step at tiny sizes on the CPU (the test suite does, on a folder of a few
# images); the figures are then meaningless, the logic is the same. There the CIFAR-10 run's
# time budget and reserve are TINY_TIME_BUDGET_S and TINY_TIME_RESERVE_S (default 90 and
# 25 s): a caller on a machine of unknown speed passes a budget that cannot run out (the
# budget's arithmetic is tested with a fake clock, tests/test_budget.py). Without TINY they
# are the recipe's.
set -euo pipefail
cd "$(dirname "$0")/.."

MODE="${1:-all}"
METHOD="${2:-supcon}"
OUT="${OUT:-$PWD/gpu_out}"
PYTHON="${PYTHON:-python3}"
TINY="${TINY:-0}"
SPEED_LIMIT_S="${SPEED_LIMIT_S:-540}"
DATA_TAR="${DATA_TAR:-.data/carry/cifar10_train_jpg.tar.gz}"
WHEELS=(clu==0.0.12 ml_collections==1.1.0)
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"
LOG="$OUT/acceptance.log"

say() { echo "[gpu_acceptance] $*" | tee -a "$LOG"; }

prepare() {
  local tarball="${1:?usage: $0 prepare TARBALL (the CIFAR-10 training images, class folders of JPEGs, as a .tar.gz)}"
  [[ -f "$tarball" ]] || { echo "prepare: $tarball is not a file" >&2; exit 2; }
  "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_17_x86_64 -d .whl "${WHEELS[@]}"
  mkdir -p "$(dirname "$DATA_TAR")"
  cp "$tarball" "$DATA_TAR"
  say "ready: .whl/ (${WHEELS[*]}) and $DATA_TAR; carry .whl and .data/carry"
}

install_missing() {
  if "$PYTHON" -c "import clu.metrics, ml_collections" 2>/dev/null; then
    return
  fi
  say "installing .whl/*.whl into /tmp/site"
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
}

data_dir() {
  if [[ -n "${DATA_DIR:-}" ]]; then
    echo "$DATA_DIR"
    return
  fi
  if [[ ! -d /tmp/cifar10/train ]]; then
    mkdir -p /tmp/cifar10
    tar -xzf "$DATA_TAR" -C /tmp/cifar10
  fi
  echo /tmp/cifar10/train
}

environment() {
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee -a "$LOG"
  fi
  "$PYTHON" -c "import jax, jaxlib; print('jax', jax.__version__, 'jaxlib', jaxlib.__version__, jax.devices())" | tee -a "$LOG"
}

speed() {
  local args=()
  if [[ "$TINY" == 1 ]]; then
    # Every row on a tiny ResNet-18 and 128 loss rows; the MFU against a nominal 1 TFLOP/s.
    args=(--depth 18 --width 0.0625 --batch 16 --image-size 32 --rows 128 --augment none
          --dtype float32 --warmup 1 --windows 1 --steps-per-window 1 --peak-tflops 1)
    # The rows that became alike compile once.
    export JAX_COMPILATION_CACHE_DIR="${JAX_COMPILATION_CACHE_DIR:-$OUT/.jax_cache}"
  fi
  say "speed: the reference suite (cut at ${SPEED_LIMIT_S} s)"
  # SIGTERM at the limit: the JSON keeps every finished row (it is rewritten after each).
  timeout -s TERM "$SPEED_LIMIT_S" "$PYTHON" -m benchmarks.speed --suite reference \
    --data-dir "$(data_dir)" --json "$OUT/speed.json" "${args[@]}" 2>&1 | tee -a "$LOG" || true
  "$PYTHON" -m benchmarks.render_performance "$OUT/speed.json" --out "$OUT/performance.md"
  say "speed: $OUT/speed.json, $OUT/performance.md"
}

cifar10() {
  local workdir=/tmp/gpu_acceptance_c10_$METHOD args=()
  if [[ "$TINY" == 1 ]]; then
    workdir="$OUT/.c10_$METHOD"
    args=(--config.model.width=0.0625 --config.model.dtype=float32 --config.batch_size=16
          --config.linear.batch_size=16 --config.augment.policy=cropflip
          --config.data.val_per_class=1 --config.knn.num_train=32
          --config.time_budget_s="${TINY_TIME_BUDGET_S:-90}"
          --config.time_reserve_s="${TINY_TIME_RESERVE_S:-25}" --config.epochs=3
          --config.eval_every_epochs=1
          --config.log_every_steps=1 --config.tensorboard=False)
  fi
  rm -rf "$workdir"
  say "cifar10: configs/cifar10_fast.py:$METHOD, pre-training and linear evaluation in one budget"
  "$PYTHON" -m supcon_jax.main --config="configs/cifar10_fast.py:$METHOD" --workdir="$workdir" \
    --config.data.train_dir="$(data_dir)" "${args[@]}" 2>&1 | tee -a "$LOG"
  "$PYTHON" -m supcon_jax.report --run "$METHOD=$workdir" --out "$OUT/c10_$METHOD" 2>&1 \
    | tee -a "$LOG"
  cp "$workdir/results.json" "$OUT/c10_${METHOD}_results.json"
  cp "$workdir/metrics.jsonl" "$OUT/c10_${METHOD}_metrics.jsonl"
  say "cifar10: $OUT/c10_${METHOD}_{results.json,metrics.jsonl,curves.png,embeddings.png}"
}

case "$MODE" in
  prepare) prepare "${2:-}" ;;
  speed) install_missing; environment; speed ;;
  cifar10) install_missing; environment; cifar10 ;;
  all) install_missing; environment; speed; cifar10 ;;
  *) echo "usage: $0 prepare TARBALL|speed|cifar10 [METHOD]|all [METHOD]" >&2; exit 2 ;;
esac
