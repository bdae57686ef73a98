"""Sensor-graph model: all 4760 sensors as nodes, fixed-degree neighbour gathers.

Train (reference size, GPU):
  python -m xecjax.train --config configs/graph.py --workdir runs/graph
Variants: `configs/graph.py:toy` (CPU minutes on the embedded toy data),
`configs/graph.py:smoke` (tests, seconds). Overrides: `--config.optim.lr=8e-4`.
"""

import ml_collections


def get_model_config(variant: str) -> ml_collections.ConfigDict:
    """Model section: name 'graph' and its widths/depths for a variant."""
    m = ml_collections.ConfigDict()
    m.name = "graph"
    # filled in by the models work (xecjax/models)
    return m


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variant = arg or "default"
    if variant not in ("default", "toy", "smoke"):
        raise ValueError(f"unknown variant {variant!r} of configs/graph.py: default|toy|smoke")
    c = ml_collections.ConfigDict()
    c.variant = variant
    c.model = get_model_config(variant)
    # data / norm / optim / loss / train / tracking sections: filled in by the training work
    return c
