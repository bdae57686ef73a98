#!/usr/bin/env bash
# Interactive GPU session: JupyterLab on a compute node, with the SSH tunnel command to reach it.
#
#   tools/start_jupyter.sh [--dry-run] [--gpus N] PARTITION TIME PORT
#
# Submits a one-GPU job running `jupyter lab --no-browser --port PORT` in the node's xecjax
# environment (as tools/submit_job.sh picks it), waits until it runs, and prints
#   ssh -N -L PORT:NODE:PORT USER@LOGIN_HOST
# to run on your laptop; the token is in runs/jupyter/jupyter-JOBID.out (runs/jupyter is made
# readable by you only). Cancel with scancel.
set -euo pipefail

dry_run=0
gpus=1
while [[ $# -gt 0 && "$1" == --* ]]; do
  case "$1" in
    --dry-run) dry_run=1; shift ;;
    --gpus) gpus="$2"; shift 2 ;;
    --help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "start_jupyter.sh: unknown option '$1'" >&2; exit 2 ;;
  esac
done
if [[ $# -ne 3 ]]; then
  echo "start_jupyter.sh: expected PARTITION TIME PORT" >&2
  exit 2
fi
partition="$1"
time_limit="$2"
port="$3"
if [[ ! "$port" =~ ^[0-9]+$ ]] || ((port < 1024 || port > 65535)); then
  echo "start_jupyter.sh: PORT must be a number in 1024..65535, got '$port'" >&2
  exit 2
fi
if [[ ! "$partition" =~ ^[A-Za-z0-9_.,-]+$ ]]; then
  echo "start_jupyter.sh: PARTITION '$partition': letters, digits, '_', '.', ',', '-' only" >&2
  exit 2
fi
if [[ ! "$time_limit" =~ ^([0-9]+-)?[0-9]+(:[0-9]+){0,2}$ ]]; then
  echo "start_jupyter.sh: TIME '$time_limit': expected MM, HH:MM:SS or D-HH[:MM[:SS]]" >&2
  exit 2
fi
if [[ ! "$gpus" =~ ^[1-9][0-9]*$ ]]; then
  echo "start_jupyter.sh: --gpus needs a positive integer, got '$gpus'" >&2
  exit 2
fi
repo="$(cd "$(dirname "$0")/.." && pwd)"
# The job log holds the Jupyter token: a folder only the user can read (the files Slurm writes
# into it inherit nothing, but nobody else can enter the folder).
logdir="$repo/runs/jupyter"

script="#!/bin/bash
#SBATCH --job-name=xecjax-jupyter
#SBATCH --partition=$partition
#SBATCH --time=$time_limit
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --gpus-per-node=$gpus
#SBATCH --cpus-per-task=8
#SBATCH --output=$logdir/jupyter-%j.out
set -euo pipefail
cd $(printf '%q' "$repo")
# shellcheck source=/dev/null
source env_setting/activate.sh  # the environment of this node's architecture
# listen on the node's own name only (what the tunnel from the login node connects to), not
# on every interface of the node
jupyter lab --no-browser --ip=\"\$(hostname)\" --port=$port
"

if [[ $dry_run -eq 1 ]]; then
  printf '%s' "$script"
  echo "# then: ssh -N -L $port:<node>:$port ${USER:-$(id -un)}@$(hostname -f 2>/dev/null || hostname)"
  exit 0
fi
mkdir -p "$logdir"
chmod 700 "$logdir"
job=$(printf '%s' "$script" | sbatch --parsable)
echo "submitted job $job; waiting for it to start..." >&2
node=""
while [[ -z "$node" || "$node" == "(null)" ]]; do
  sleep 5
  state=$(squeue -h -j "$job" -o %T || true)
  if [[ -z "$state" ]]; then
    echo "start_jupyter.sh: job $job ended; see $logdir/jupyter-$job.out" >&2
    exit 1
  fi
  [[ "$state" == RUNNING ]] && node=$(squeue -h -j "$job" -o %N)
done
echo "Jupyter runs on $node (job $job). On your laptop:"
echo "  ssh -N -L $port:$node:$port ${USER:-$(id -un)}@$(hostname -f 2>/dev/null || hostname)"
echo "then open http://localhost:$port (token in $logdir/jupyter-$job.out); stop with: scancel $job"
