"""Best validation metric of every point of a scan, read back from MLflow.

  python tools/scan_summary.py SCAN_NAME [--tracking-uri sqlite:///mlruns.db]
      [--experiment gamma_angle] [--metric val_resolution_deg] [--json]

(`tools/run_scan.sh --summary SCAN_NAME` runs this.) Runs belong to the scan when their MLflow
run name starts with `SCAN_NAME-` (tools/run_scan.sh names them so); a resumed run that logged
into several MLflow runs counts once, with its best value. Lower is better.
"""

from __future__ import annotations

import argparse
import json
import math
import sys


def scan_table(
    scan: str, tracking_uri: str, experiment: str, metric: str
) -> list[dict[str, object]]:
    """One row per scan point: name, best value of `metric`, its step, MLflow run ids."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise SystemExit(f"scan_summary: no MLflow experiment {experiment!r} in {tracking_uri}")
    runs = client.search_runs(
        [exp.experiment_id], filter_string=f"tags.mlflow.runName LIKE '{scan}-%'"
    )
    rows: dict[str, dict[str, object]] = {}
    for run in runs:
        name = run.info.run_name
        history = client.get_metric_history(run.info.run_id, metric)
        finite = [m for m in history if math.isfinite(m.value)]
        best = min(finite, key=lambda m: m.value) if finite else None
        row = rows.setdefault(name, {"point": name, metric: math.inf, "step": None, "runs": []})
        row["runs"].append(run.info.run_id)
        if best is not None and best.value < row[metric]:
            row[metric], row["step"] = best.value, best.step
    return sorted(rows.values(), key=lambda r: r[metric])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scan")
    parser.add_argument("--tracking-uri", default="sqlite:///mlruns.db")
    parser.add_argument("--experiment", default="gamma_angle")
    parser.add_argument("--metric", default="val_resolution_deg")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    rows = scan_table(args.scan, args.tracking_uri, args.experiment, args.metric)
    if not rows:
        print(
            f"scan_summary: no runs named '{args.scan}-*' in {args.tracking_uri}", file=sys.stderr
        )
        return 1
    if args.json:
        print(json.dumps(rows))
        return 0
    width = max(len(r["point"]) for r in rows)
    print(f"{'point':<{width}}  {args.metric:>20}  step")
    for r in rows:
        print(f"{r['point']:<{width}}  {r[args.metric]:>20.4f}  {r['step']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
