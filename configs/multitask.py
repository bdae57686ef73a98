"""Multi-task reconstruction: the angle plus energy, timing and conversion point (u, v, w).

The XECRegressor of configs/convnext.py (the same variants) with one head per task on the
shared encoder (xecjax.tasks):
  python -m xecjax.train --config configs/multitask.py:smoke --workdir runs/mt_smoke
Variants: default (reference size, GPU), `:toy` (CPU), `:smoke` (tests, seconds). The toy data
of this config draw the gamma energy uniformly in 40-56 MeV, so that the energy head has
something to learn, and the model reads the absolute sensor times (`time`), which carry the
event time that the timing head measures. Per-task options:
`--config.tasks.energy.loss=relative_l1`, `--config.tasks.uvw.weight=0.5`,
`--config.tasks.loss_balance=auto`, `--config.tasks.timing.enabled=false`.
"""

from pathlib import Path

from xecjax.config import load_config


def get_config(arg: str | None = None):
    c = load_config(f"{Path(__file__).with_name('convnext.py')}:{arg or ''}")
    for name in ("energy", "timing", "uvw"):
        c.tasks[name].enabled = True
    c.data.toy_energy_mev = (40.0, 56.0)
    # the absolute sensor times: relative_time (minus the event's earliest) removes the event
    # time that the timing task measures (with it the toy's timing head learned nothing:
    # 1.02 ns, the emission jitter itself)
    c.norm.time_branch = "time"
    # 5 ns per unit around 5 ns (bright sensors' toy times: 1-11 ns): a 1 ns shift of the event
    # is 0.2 in the feature. Toy, seed 0: timing 0.12 ns, uvw 1.77 cm, but angle psi 68 0.796
    # deg; with relative_time (114 ns per unit) timing 1.02 ns (nothing), uvw 2.37 cm, angle
    # 0.666 deg (README)
    c.norm.time_scale, c.norm.time_shift = 5e-9, 1.0
    return c
