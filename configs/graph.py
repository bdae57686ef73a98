"""Sensor-graph model: all 4760 sensors as nodes, fixed-degree neighbour gathers.

Train (reference size, GPU):
  python -m xecjax.train --config configs/graph.py --workdir runs/graph
Variants: `configs/graph.py:toy` (CPU minutes on the embedded toy data),
`configs/graph.py:smoke` (tests, seconds). Overrides: `--config.optim.lr=8e-4`.
Toy (2-core CPU, tools/learning_curve.py, one seed, 3 epochs): test psi 68 16.0 deg with 1,000
training events and 1.886 deg with 3,000, against 0.775 deg for the light centroid on the same
events; ~26-38 events/s.
Resume a run: `--config.resume=auto` (same --workdir).
"""

import ml_collections

from xecjax.config import experiment_config


def get_model_config(variant: str) -> ml_collections.ConfigDict:
    """Model section: name 'graph' and every architectural option for a variant.

    "default" is the GPU size; "toy" trains on a CPU in minutes; "smoke" is for tests.
    """
    m = ml_collections.ConfigDict()
    m.name = "graph"
    m.dim = 64  # node feature width
    m.depth = 4  # message-passing blocks
    m.k = 8  # neighbours per sensor (same face, nearest; geometry.sensor_neighbors)
    m.heads = 4  # gate heads per edge (each gates dim / heads channels)
    m.pos_scale = 100.0  # cm; node positions are fed as position / pos_scale
    m.pooling = "attention"  # "attention" | "mean" over the 4760 nodes
    m.head_hidden = 256
    m.head_dropout = 0.2
    m.drop_path = 0.0  # max stochastic depth rate (linear over blocks)
    m.uncertainty = False  # True: 4 outputs (theta, phi, log_sigma_theta, log_sigma_phi)
    # "angles": the reference head regresses (theta, phi) in degrees; "vector": a unit vector
    # (output (theta, phi, x, y, z), no phi wrap-around; losses angular / vmf)
    m.output = "angles"
    m.kappa = False  # vector / point: + log kappa of a von Mises-Fisher width (loss vmf)
    if variant == "toy":
        m.dim, m.depth, m.k, m.heads, m.head_hidden = 32, 2, 6, 4, 128
        m.output = "vector"
    elif variant == "smoke":
        m.dim, m.depth, m.k, m.heads, m.head_hidden = 8, 1, 4, 2, 16
        m.drop_path = 0.1
    return m


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = experiment_config("configs/graph.py", arg, get_model_config)
    if c.variant == "toy":
        c.optim.loss = "opening_angle"  # degrees, L1 on the sphere, on the unit vector
        c.train.epochs = 1  # ~26-38 events/s on the 2-core CPU: 16,000 events in ~10 min
    return c
