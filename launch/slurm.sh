#!/usr/bin/env bash
#SBATCH --job-name=supcon
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=32
#SBATCH --time=24:00:00
#SBATCH --output=supcon-%j.out
#SBATCH --signal=TERM@180
# Multi-node GPU training: one process per node, each driving all of its node's GPUs.
#
#   sbatch [--nodes=N --gpus-per-node=G ...] launch/slurm.sh WORKDIR [--config.FIELD=VALUE ...]
#   launch/slurm.sh --dry-run WORKDIR [--config.FIELD=VALUE ...]   # print, run nothing
#
# Submit from the repository root. WORKDIR must be on a file system every node sees (or
# gs://); a resubmitted job resumes from it. Three minutes before the time limit every task
# gets SIGTERM: the trainer writes a checkpoint and exits.
# Settings from the environment (sbatch passes it on): CONFIG [configs/imagenet.py],
# PYTHON [python3]: the interpreter of an environment with requirements.txt and
# jax[cuda12] installed, DRY_RUN [0]: 1 = --dry-run.
set -euo pipefail

CONFIG="${CONFIG:-configs/imagenet.py}"
PYTHON="${PYTHON:-python3}"
DRY_RUN="${DRY_RUN:-0}"

if [[ "${1:-}" == --dry-run ]]; then
  DRY_RUN=1
  shift
fi
if [[ $# -lt 1 || "$1" == --* ]]; then
  sed -n '10,20s/^# \{0,1\}//p' "${BASH_SOURCE[0]}" >&2
  exit 2
fi
workdir="$1"
shift

# sbatch runs a copy of this script from its spool directory, so find the code from where
# the job was submitted.
if [[ -n "${SLURM_JOB_ID:-}" ]]; then
  cd "$SLURM_SUBMIT_DIR"
else
  cd "$(dirname "${BASH_SOURCE[0]}")/.."
fi
if [[ ! -f supcon_jax/main.py ]]; then
  echo "no supcon_jax/main.py in $PWD: submit from the repository root" >&2
  exit 2
fi

# jax.distributed.initialize() reads the cluster from SLURM's variables, and by default
# gives each process only the GPU numbered SLURM_LOCALID (one process per GPU). One
# process per node must see all of the node's GPUs.
gpus="${SLURM_GPUS_ON_NODE:-$( (nvidia-smi -L 2>/dev/null || true) | wc -l)}"
if ((gpus > 0)); then
  JAX_LOCAL_DEVICE_IDS="$(seq -s, 0 $((gpus - 1)))"
  export JAX_LOCAL_DEVICE_IDS
  echo "JAX_LOCAL_DEVICE_IDS=$JAX_LOCAL_DEVICE_IDS"
fi

cmd=("$PYTHON" -m supcon_jax.main --config="$CONFIG" --workdir="$workdir" --distributed "$@")
line="$(printf '%q ' "${cmd[@]}")"
echo "python command: ${line% }"
srun_cmd=(srun --ntasks-per-node=1 --kill-on-bad-exit=1 "${cmd[@]}")
if [[ "$DRY_RUN" == 1 ]]; then
  printf '+'
  printf ' %q' "${srun_cmd[@]}"
  printf '\n'
else
  "${srun_cmd[@]}"
fi
