"""XECRegressor: ConvNeXt V2 face CNN + hex graph encoder + fusion transformer.

Train (reference size, GPU):
  python -m xecjax.train --config configs/convnext.py --workdir runs/convnext
Variants: `configs/convnext.py:toy` (CPU minutes on the embedded toy data),
`configs/convnext.py:smoke` (tests, seconds). Overrides: `--config.optim.lr=8e-4`.
Expected (toy, the README's main job, measured on the 2-core CPU machine): 20,000 point-vertex
toy events (16 train / 2 val / 2 test files), 4 epochs of the "point" head with the opening-angle
loss plus the conversion-point target, 116-154 events/s, 10.4 min for train + evaluate when the
machine is otherwise idle, peak RSS 3.7 GB; test-split psi 68 0.655 / 0.671 / 0.688 deg for
train seeds 0 / 1 / 2, against 0.794 deg for the light centroid and 0.542 deg for the
point-source fit on the same events. (Before: 7 epochs of 2,880 events regressing (theta, phi)
gave 3.75-4.46 deg.)
Resume a run: `--config.resume=auto` (same --workdir).
"""

import ml_collections

from xecjax.config import experiment_config


def get_model_config(variant: str) -> ml_collections.ConfigDict:
    """Model section: name 'regressor' and every architectural option for a variant.

    "default" is the reference XECRegressor (27,314,950 parameters); "toy" trains on a CPU in
    minutes; "smoke" is for tests. Constraint: cnn_dims[-1] * prod(face_grid) == d_model.
    """
    m = ml_collections.ConfigDict()
    m.name = "regressor"
    m.outer_mode = "finegrid"  # "finegrid" (15 x 24 pooled fine grid) | "split" (7 tokens)
    m.cnn_dims = (32, 64)  # ConvNeXt V2 stage widths (stem -> d0, k2 s2 downsample -> d1)
    m.cnn_depths = (2, 3)  # blocks per stage
    m.face_grid = (4, 4)  # bilinear resize of the last CNN map -> one token per face
    m.dwconv = "direct"  # depthwise 7x7: "direct" (CPU) | "toeplitz" | "xla" (GPU) | "onnx"
    m.hex_dim = 96  # hex encoder width
    m.hex_depth = 4  # HexNeXt blocks
    m.d_model = 1024  # token width of the fusion transformer
    m.num_heads = 8
    m.ffn_dim = 4096
    m.num_layers = 2  # post-norm transformer encoder layers
    m.dropout = 0.1  # transformer dropout (attention weights, residuals, FFN)
    m.head_hidden = 256
    m.head_dropout = 0.2
    m.drop_path = 0.0  # max stochastic depth rate (linear over CNN / hex blocks)
    m.uncertainty = False  # True: 4 outputs (theta, phi, log_sigma_theta, log_sigma_phi)
    # "angles": the reference head regresses (theta, phi) in degrees; "vector": a unit vector
    # (output (theta, phi, x, y, z), no phi wrap-around; losses angular / vmf);
    # "point": the line from the target centre to the conversion point, localised by a
    # soft-argmax over the inner-face CNN map plus depth (xecjax.models.regressor.PointHead)
    m.output = "angles"
    m.kappa = False  # vector / point: + log kappa of a von Mises-Fisher width (loss vmf)
    # the measured positron vertex (xyzVTX, cm) as one more fusion token: the angle heads see
    # where the gamma came from (ONNX input `vertex` [batch_size, 3]; real data: its xyzVTX)
    m.vertex_input = False
    if variant == "toy":
        # 4 x 4 face grid as the reference: a 2 x 2 resize of the 46 x 21 inner map reads only
        # rows 11 and 34 (no antialias), leaving the face centre outside the token.
        m.cnn_dims, m.cnn_depths, m.face_grid = (16, 32), (1, 1), (4, 4)
        m.hex_dim, m.hex_depth = 32, 2
        m.d_model, m.num_heads, m.ffn_dim, m.num_layers = 512, 4, 512, 1
        m.head_hidden = 128
        m.output = "point"  # direction from the localised conversion point (PointHead)
    elif variant == "smoke":
        m.cnn_dims, m.cnn_depths, m.face_grid = (4, 8), (1, 1), (2, 2)
        m.hex_dim, m.hex_depth = 8, 1
        m.d_model, m.num_heads, m.ffn_dim, m.num_layers = 32, 2, 64, 1
        m.head_hidden = 16
        m.drop_path = 0.1
    return m


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    # high smoke lr: the loss must visibly fall within the tests' 80 steps
    c = experiment_config("configs/convnext.py", arg, get_model_config, lr={"smoke": 1e-2})
    if c.variant == "toy":
        # the opening angle (degrees, L1 on the sphere) plus the conversion point (cm)
        c.optim.loss, c.optim.point_weight = "opening_angle", 1.0
    return c
