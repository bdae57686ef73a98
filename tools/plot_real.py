"""Plots of a real-data (or validation) `val_tree`: predictions against the reference angles.

  python tools/plot_real.py --input inference_results_Run430000-432000.root [--output-dir DIR]

On data the reference ("true_*" branches) is the conventional reconstruction: the direction from
the positron vertex to the reconstructed gamma position, so the widths shown are those of the
difference of two reconstructions, not a resolution against truth. Writes into DIR (default
`<input stem>_plots/` beside the input):
  scatter.pdf             predicted vs reference theta and phi; d_theta, d_phi and opening-angle
                          distributions (the resolution)
  resolution_profile.pdf  68 % widths of d_theta, d_phi, 68 % opening angle and median d_theta
                          vs reference theta and phi
  one_minus_cos.pdf       1 - cos(opening angle), log-log
  summary.json            bias / RMS / skewness of d_theta and d_phi, opening-angle percentiles
Angles in degrees; d_phi is wrapped into [-180, 180). In the plots "true" means the reference.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import uproot  # noqa: E402

from xecjax import plots  # noqa: E402
from xecjax.metrics import PROFILE_BINS, evaluation_metrics, profiles_of  # noqa: E402

NEEDED = ("pred_theta", "pred_phi", "true_theta", "true_phi", "opening_angle")


def read_val_tree(path: str | os.PathLike, tree: str = "val_tree") -> dict[str, np.ndarray]:
    """The angle branches of a val_tree as float64 arrays [N] (degrees)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"input file {str(path)!r} does not exist")
    try:
        f = uproot.open(path)
    except Exception as e:
        raise ValueError(f"{str(path)!r} is not a readable ROOT file: {e}") from None
    with f:
        if tree not in f:
            raise KeyError(f"{str(path)!r} has no tree {tree!r} (keys: {sorted(f.keys())})")
        missing = [b for b in NEEDED if b not in f[tree]]
        if missing:
            raise KeyError(f"{str(path)!r}:{tree} lacks branches {missing}; expected {NEEDED}")
        arrays = f[tree].arrays(list(NEEDED), library="np")
    out = {k: np.asarray(v, np.float64) for k, v in arrays.items()}
    if len(out["pred_theta"]) == 0:
        raise ValueError(f"{str(path)!r}:{tree} has no entries")
    return out


def plot_all(d: dict[str, np.ndarray], out_dir: Path, bins: int = PROFILE_BINS) -> list[Path]:
    """Write the three PDFs and summary.json for val_tree arrays d into out_dir.

    Scatter, residuals and profiles are drawn by the same functions as `xecjax.evaluate`, so
    real-data and validation plots can be compared page by page.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    pred = np.stack([d["pred_theta"], d["pred_phi"]], axis=1)
    true = np.stack([d["true_theta"], d["true_phi"]], axis=1)
    written = [
        plots.plot_scatter(true, {"model": pred}, out_dir / "scatter.pdf"),
        plots.plot_resolution_profiles(
            {"model": profiles_of(pred, true, bins)}, out_dir / "resolution_profile.pdf"
        ),
    ]
    # 1 - cos(psi) spans decades (0.5 deg -> 4e-5, 10 deg -> 1.5e-2): log-log shows both the
    # core and the tail of badly reconstructed events
    omc = np.clip(1.0 - np.cos(np.deg2rad(d["opening_angle"])), 1e-9, None)
    with plots.atomic_pdf(out_dir / "one_minus_cos.pdf") as pdf:
        fig, ax = plt.subplots(figsize=(6, 4.5))
        ax.hist(omc, bins=np.logspace(np.log10(omc.min()), np.log10(max(omc.max(), 2e-9)), 60))
        ax.set(xscale="log", yscale="log", xlabel="1 - cos(opening angle)", ylabel="events")
        fig.tight_layout()
        pdf.savefig(fig)
        plt.close(fig)
    written.append(out_dir / "one_minus_cos.pdf")
    summary = evaluation_metrics(pred, true)
    tmp = out_dir / f".summary.json.tmp{os.getpid()}"
    tmp.write_text(json.dumps(summary, indent=1) + "\n")
    os.replace(tmp, out_dir / "summary.json")
    written.append(out_dir / "summary.json")
    return written


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--input", required=True, help="ROOT file with a val_tree")
    p.add_argument("--output-dir", help="default: <input stem>_plots beside the input")
    p.add_argument("--tree", default="val_tree")
    p.add_argument("--bins", type=int, default=PROFILE_BINS, help="profile bins")
    args = p.parse_args(argv)
    try:
        d = read_val_tree(args.input, args.tree)
    except (FileNotFoundError, KeyError, ValueError) as e:
        print(f"plot_real: {e}", file=sys.stderr)
        return 1
    inp = Path(args.input)
    out_dir = Path(args.output_dir) if args.output_dir else inp.with_name(f"{inp.stem}_plots")
    paths = plot_all(d, out_dir, args.bins)
    summary = json.loads((out_dir / "summary.json").read_text())
    print(
        f"{len(d['pred_theta'])} events; 68 % opening angle {summary['psi_68']:.3f} "
        f"deg; theta bias {summary['theta_bias']:.3f} RMS {summary['theta_rms']:.3f}; phi bias "
        f"{summary['phi_bias']:.3f} RMS {summary['phi_rms']:.3f} deg"
    )
    for path in paths:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
