#!/usr/bin/env bash
# Train on a Cloud TPU VM slice: one process per TPU host, all started at once.
#
#   launch/tpu_pod.sh [--dry-run] create             # create or reuse the slice, copy, install
#   launch/tpu_pod.sh [--dry-run] sync               # copy the code again and re-install
#   launch/tpu_pod.sh [--dry-run] start gs://BUCKET/runs/NAME [--config.FIELD=VALUE ...]
#   launch/tpu_pod.sh [--dry-run] logs [WORKER]      # follow a worker's log (default 0)
#   launch/tpu_pod.sh [--dry-run] stop               # end the training on every worker
#   launch/tpu_pod.sh [--dry-run] ssh [WORKER]
#   launch/tpu_pod.sh [--dry-run] delete             # delete the slice (billing stops)
#
# Settings come from the environment (defaults in brackets):
#   TPU_NAME [supcon]  ZONE [us-central2-b]  ACCELERATOR_TYPE [v4-32]
#   RUNTIME_VERSION [tpu-ubuntu2204-base]  PROJECT [gcloud's default]  SPOT [0]: 1 = spot VMs
#   CONFIG [configs/imagenet.py]  DATA_DIR [unset]: gs:// TFDS data_dir, passed as
#   --config.data.data_dir  REPO_URL [unset]: git clone this on the workers instead of copying
#   the local checkout  REPO_REF [unset]: branch or tag to clone  PYTHON_VERSION [3.11]
#   DRY_RUN [0]: 1 = same as --dry-run: print every gcloud command instead of running it.
# The workdir must be gs://: every host writes its checkpoint shards and host 0 the metrics
# there, and a restarted run resumes from it.
set -euo pipefail

TPU_NAME="${TPU_NAME:-supcon}"
ZONE="${ZONE:-us-central2-b}"
ACCELERATOR_TYPE="${ACCELERATOR_TYPE:-v4-32}"
RUNTIME_VERSION="${RUNTIME_VERSION:-tpu-ubuntu2204-base}"
PROJECT="${PROJECT:-}"
SPOT="${SPOT:-0}"
CONFIG="${CONFIG:-configs/imagenet.py}"
DATA_DIR="${DATA_DIR:-}"
REPO_URL="${REPO_URL:-}"
REPO_REF="${REPO_REF:-}"
PYTHON_VERSION="${PYTHON_VERSION:-3.11}"
DRY_RUN="${DRY_RUN:-0}"

REMOTE_DIR=supcon_jax  # the code, relative to the worker's home directory
VENV=supcon_venv  # outside the code directory, which each copy replaces
LOG=supcon_train.log
PID=supcon_train.pid
LIBTPU_RELEASES=https://storage.googleapis.com/jax-releases/libtpu_releases.html
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

usage() {
  sed -n '2,20s/^# \{0,1\}//p' "${BASH_SOURCE[0]}" >&2
  exit 2
}

# Runs a command, or with DRY_RUN=1 prints it (shell-quoted, so it can be pasted).
run() {
  if [[ "$DRY_RUN" == 1 ]]; then
    printf '+'
    printf ' %q' "$@"
    printf '\n'
  else
    "$@"
  fi
}

# gcloud compute tpus tpu-vm VERB [ARGS...] with the zone and project; the verbs that name
# the TPU get it from the caller (scp names it inside its destination).
tpu_vm() {
  local verb="$1"
  shift
  local flags=(--zone="$ZONE")
  if [[ -n "$PROJECT" ]]; then
    flags+=(--project="$PROJECT")
  fi
  run gcloud compute tpus tpu-vm "$verb" "$@" "${flags[@]}"
}

on_workers() {  # on_workers WORKER COMMAND
  tpu_vm ssh "$TPU_NAME" --worker="$1" --command="$2"
}

exists() {
  [[ "$DRY_RUN" != 1 ]] && tpu_vm describe "$TPU_NAME" --format='value(state)' >/dev/null 2>&1
}

copy_code() {
  # A fresh directory each time, so files deleted here are gone there too.
  if [[ -n "$REPO_URL" ]]; then
    local clone=(git clone -q --depth=1)
    if [[ -n "$REPO_REF" ]]; then
      clone+=(--branch="$REPO_REF")
    fi
    on_workers all "rm -rf $REMOTE_DIR && $(printf '%q ' "${clone[@]}" "$REPO_URL")$REMOTE_DIR"
    return
  fi
  # The checkout's files as git sees them (tracked and untracked, not ignored): no venv.
  local tarball="${TMPDIR:-/tmp}/supcon_jax.$$.tar.gz"
  if [[ "$DRY_RUN" == 1 ]]; then
    echo "+ git -C $ROOT ls-files -z --cached --others --exclude-standard" \
      "| tar -C $ROOT -czf $tarball --null -T -"
  else
    trap 'rm -f "$tarball"' EXIT
    git -C "$ROOT" ls-files -z --cached --others --exclude-standard \
      | tar -C "$ROOT" -czf "$tarball" --null -T -
  fi
  tpu_vm scp "$tarball" "$TPU_NAME:supcon_jax.tar.gz" --worker=all
  on_workers all "rm -rf $REMOTE_DIR && mkdir $REMOTE_DIR && \
tar -xzf supcon_jax.tar.gz -C $REMOTE_DIR"
}

install() {
  # The TPU images ship Python 3.10 and jax needs >= 3.11, so uv provides the interpreter.
  # 'jax[tpu]' resolves to the jax pinned in requirements.txt plus its matching libtpu.
  on_workers all "set -e; python3 -m pip install -q --user uv; \
[ -x ~/$VENV/bin/python ] || ~/.local/bin/uv venv -q --python $PYTHON_VERSION ~/$VENV; \
~/.local/bin/uv pip install -q --python ~/$VENV/bin/python -r $REMOTE_DIR/requirements.txt \
'jax[tpu]' -f $LIBTPU_RELEASES"
}

create() {
  if exists; then
    echo "reusing TPU $TPU_NAME in $ZONE"
  else
    local extra=()
    if [[ "$SPOT" == 1 ]]; then
      extra+=(--spot)
    fi
    tpu_vm create "$TPU_NAME" --accelerator-type="$ACCELERATOR_TYPE" --version="$RUNTIME_VERSION" \
      "${extra[@]}"
  fi
  copy_code
  install
}

start() {
  if [[ $# -lt 1 || "$1" != gs://* ]]; then
    echo "start needs a gs:// workdir (every host writes there), e.g. gs://BUCKET/runs/NAME" >&2
    exit 2
  fi
  local workdir="$1"
  shift
  local cmd=(python -m supcon_jax.main --config="$CONFIG" --workdir="$workdir"
             --distributed)
  if [[ -n "$DATA_DIR" ]]; then
    cmd+=(--config.data.data_dir="$DATA_DIR")
  fi
  cmd+=("$@")
  local line
  line="$(printf '%q ' "${cmd[@]}")"
  echo "python command: ${line% }"
  # nohup + redirections: the run outlives the ssh session that starts it.
  on_workers all "if [ -f ~/$PID ] && kill -0 \$(cat ~/$PID) 2>/dev/null; then \
echo 'a run is going on: launch/tpu_pod.sh stop first' >&2; exit 1; fi; \
cd $REMOTE_DIR && . ~/$VENV/bin/activate && \
nohup ${line% } > ~/$LOG 2>&1 < /dev/null & echo \$! > ~/$PID"
}

main() {
  if [[ "${1:-}" == --dry-run ]]; then
    DRY_RUN=1
    shift
  fi
  local command="${1:-}"
  shift || true
  case "$command" in
    create) create ;;
    sync) copy_code; install ;;
    start) start "$@" ;;
    logs) on_workers "${1:-0}" "tail -n 200 -F ~/$LOG" ;;
    stop) on_workers all "[ -f ~/$PID ] && kill \$(cat ~/$PID) || true" ;;
    ssh) tpu_vm ssh "$TPU_NAME" --worker="${1:-0}" ;;
    delete) tpu_vm delete "$TPU_NAME" --quiet ;;
    *) usage ;;
  esac
}

main "$@"
