#!/usr/bin/env bash
# Submit an xecjax training run to Slurm, on x86 (A100/H100) or ARM Grace-Hopper nodes.
#
#   tools/submit_job.sh [--dry-run] [--partition P] [--time T] [--gpus N] [--nodes N]
#                       [--per-gpu] [--account A] [--cpus N] [--mem M]
#                       RUN_NAME CONFIG [--config.key=value ...]
#
# One process per node driving all its GPUs (default) or one per GPU (--per-gpu), started with
# srun so that jax.distributed.initialize() reads Slurm's variables. The job always passes
# --config.resume=auto: resubmitting the same RUN_NAME continues from runs/RUN_NAME's last
# checkpoint. SIGTERM is sent 120 s before the time limit (or on preemption); training saves,
# exits 75 (xecjax.train.EXIT_INTERRUPTED) and the job requeues itself (scontrol requeue), so an
# unfinished run never ends COMPLETED and `afterok` dependencies wait for the real end.
# --dry-run prints the batch script instead.
set -euo pipefail

usage() {
  sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'
  exit "${1:-0}"
}

dry_run=0
partition="${XECJAX_PARTITION:-gpu}"
time_limit="24:00:00"
gpus=1
nodes=1
per_gpu=0
account=""
cpus=""
mem=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) dry_run=1; shift ;;
    --partition) partition="$2"; shift 2 ;;
    --time) time_limit="$2"; shift 2 ;;
    --gpus) gpus="$2"; shift 2 ;;
    --nodes) nodes="$2"; shift 2 ;;
    --per-gpu) per_gpu=1; shift ;;
    --account) account="$2"; shift 2 ;;
    --cpus) cpus="$2"; shift 2 ;;
    --mem) mem="$2"; shift 2 ;;
    -h | --help) usage 0 ;;
    --) shift; break ;;
    -*) echo "submit_job.sh: unknown option '$1'" >&2; usage 2 ;;
    *) break ;;
  esac
done
if [[ $# -lt 2 ]]; then
  echo "submit_job.sh: RUN_NAME and CONFIG are required" >&2
  usage 2
fi
run_name="$1"
config="$2"
shift 2
for override in "$@"; do
  if [[ "$override" != --config.*=* ]]; then
    echo "submit_job.sh: '$override' is not an override of the form --config.key=value" >&2
    exit 2
  fi
done
if [[ ! "$run_name" =~ ^[A-Za-z0-9._-]+$ ]]; then
  echo "submit_job.sh: RUN_NAME '$run_name' may contain only letters, digits, '.', '_', '-'" >&2
  exit 2
fi
for n in "$gpus" "$nodes" ${cpus:+"$cpus"}; do
  if [[ ! "$n" =~ ^[1-9][0-9]*$ ]]; then
    echo "submit_job.sh: --gpus/--nodes/--cpus need a positive integer, got '$n'" >&2
    exit 2
  fi
done
# Values that go into #SBATCH lines: only what Slurm accepts there (no newlines, no spaces).
if [[ ! "$partition" =~ ^[A-Za-z0-9_.,-]+$ ]]; then
  echo "submit_job.sh: --partition '$partition': letters, digits, '_', '.', ',', '-' only" >&2
  exit 2
fi
if [[ -n "$account" && ! "$account" =~ ^[A-Za-z0-9_.-]+$ ]]; then
  echo "submit_job.sh: --account '$account': letters, digits, '_', '.', '-' only" >&2
  exit 2
fi
if [[ ! "$time_limit" =~ ^([0-9]+-)?[0-9]+(:[0-9]+){0,2}$ ]]; then
  echo "submit_job.sh: --time '$time_limit': expected MM, HH:MM:SS or D-HH[:MM[:SS]]" >&2
  exit 2
fi
if [[ -n "$mem" && ! "$mem" =~ ^[1-9][0-9]*[KMGT]?$ ]]; then
  echo "submit_job.sh: --mem '$mem': expected a size such as 64G or 500M" >&2
  exit 2
fi
config_file="${config%%:*}"
if [[ ! -f "$config_file" ]]; then
  echo "submit_job.sh: config file '$config_file' not found" >&2
  exit 2
fi

repo="$(cd "$(dirname "$0")/.." && pwd)"
workdir="runs/$run_name"
if [[ $per_gpu -eq 1 ]]; then
  tasks_per_node=$gpus
  gpu_lines="#SBATCH --gpus-per-task=1"
else
  tasks_per_node=1
  gpu_lines="#SBATCH --gpus-per-node=$gpus"
fi
cpus="${cpus:-$((8 * gpus / tasks_per_node))}"
quoted_overrides=""
for override in "$@"; do
  quoted_overrides+=" $(printf '%q' "$override")"
done

script="#!/bin/bash
#SBATCH --job-name=xecjax-$run_name
#SBATCH --partition=$partition
#SBATCH --time=$time_limit
#SBATCH --nodes=$nodes
#SBATCH --ntasks-per-node=$tasks_per_node
$gpu_lines
#SBATCH --cpus-per-task=$cpus
#SBATCH --output=$repo/$workdir/slurm-%j.out
#SBATCH --signal=TERM@120
#SBATCH --requeue${account:+
#SBATCH --account=$account}${mem:+
#SBATCH --mem=$mem}
set -euo pipefail
cd $(printf '%q' "$repo")

# shellcheck source=/dev/null
source env_setting/activate.sh  # the environment of this node's architecture

echo \"job \$SLURM_JOB_ID on \$SLURM_JOB_NODELIST (\$XECJAX_ARCH), \$SLURM_NTASKS processes\"
rc=0
srun --kill-on-bad-exit=1 python -m xecjax.train --config $(printf '%q' "$config") --workdir $workdir --config.resume=auto$quoted_overrides || rc=\$?
if [[ \$rc -eq 75 ]]; then  # interrupted after its checkpoint (xecjax.train.EXIT_INTERRUPTED)
  echo \"run interrupted (checkpoint saved): requeueing job \$SLURM_JOB_ID\"
  scontrol requeue \"\$SLURM_JOB_ID\" || echo \"requeue failed: resubmit to continue\"
fi
exit \$rc
"

if [[ $dry_run -eq 1 ]]; then
  printf '%s' "$script"
  exit 0
fi
if ! command -v sbatch >/dev/null 2>&1; then
  echo "submit_job.sh: sbatch not found (not on a Slurm login node?); use --dry-run to see the script" >&2
  exit 1
fi
mkdir -p "$repo/$workdir"
printf '%s' "$script" >"$repo/$workdir/job.sbatch"
sbatch "$repo/$workdir/job.sbatch"
