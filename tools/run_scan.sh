#!/usr/bin/env bash
# Hyperparameter scan: one Slurm job per line of override lists.
#
#   tools/run_scan.sh [--dry-run] [submit_job.sh options] SCAN_NAME CONFIG SCAN_FILE
#   tools/run_scan.sh --summary SCAN_NAME [--tracking-uri URI]
#
# SCAN_FILE has one scan point per line: config overrides separated by spaces, e.g.
#   --config.optim.lr=4e-4 --config.model.drop_path=0.1
# (blank lines and lines starting with # are skipped). Each point runs as
# runs/SCAN_NAME-<overrides> (e.g. runs/lr-scan-lr4e-4_drop_path0.1), submitted with
# tools/submit_job.sh, so resubmitting the scan resumes every point. --summary prints the best
# validation 68% opening angle of every point, read back from MLflow.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"

if [[ "${1:-}" == "--summary" ]]; then
  shift
  exec python "$here/scan_summary.py" "$@"
fi

submit_opts=()
while [[ $# -gt 0 && "$1" == --* ]]; do
  case "$1" in
    --dry-run | --per-gpu) submit_opts+=("$1"); shift ;;
    -h | --help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *)
      if [[ $# -lt 2 ]]; then
        echo "run_scan.sh: option '$1' needs a value" >&2
        exit 2
      fi
      submit_opts+=("$1" "$2"); shift 2 ;;
  esac
done
if [[ $# -ne 3 ]]; then
  echo "run_scan.sh: expected SCAN_NAME CONFIG SCAN_FILE (see --help)" >&2
  exit 2
fi
scan_name="$1"
config="$2"
scan_file="$3"
if [[ ! -r "$scan_file" ]]; then
  echo "run_scan.sh: scan file '$scan_file' not readable" >&2
  exit 2
fi

# point name from overrides: --config.optim.lr=4e-4 -> lr4e-4, joined with '_'
point_name() {
  local parts=() item key value
  for item in "$@"; do
    key="${item%%=*}"
    key="${key##*.}"
    value="${item#*=}"
    parts+=("$key$value")
  done
  local IFS=_
  printf '%s' "${parts[*]}" | tr -c 'A-Za-z0-9._-' '-'
}

n=0
while IFS= read -r line || [[ -n "$line" ]]; do
  line="${line%%#*}"
  [[ -z "${line// /}" ]] && continue
  read -r -a overrides <<<"$line"
  run_name="$scan_name-$(point_name "${overrides[@]}")"
  echo "== $run_name" >&2
  "$here/submit_job.sh" "${submit_opts[@]}" "$run_name" "$config" "${overrides[@]}"
  n=$((n + 1))
done <"$scan_file"
echo "run_scan.sh: $n scan points for '$scan_name'" >&2
