"""XECRegressor: ConvNeXt V2 face CNN + hex graph encoder + fusion transformer.

Train (reference size, GPU):
  python -m xecjax.train --config configs/convnext.py --workdir runs/convnext
Variants: `configs/convnext.py:toy` (CPU minutes on the embedded toy data),
`configs/convnext.py:smoke` (tests, seconds). Overrides: `--config.optim.lr=8e-4`.
Expected (toy, measured on the 2-core CPU machine): 8 epochs of 3,200 point-vertex toy
events, ~35 events/s, 13-14 min including data generation; validation 68 % opening
angle 5.8 deg (most epochs go into learning the theta ~ 90 deg output offset).
Resume a run: `--config.train.resume=auto` (same --workdir).
"""

import ml_collections


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
    m.dwconv = "toeplitz"  # depthwise 7x7: "toeplitz" (banded matmuls, CPU) | "xla" (GPU)
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
    m.dtype = "float32"  # compute dtype: "float32" | "bfloat16" (parameters stay float32)
    if variant == "toy":
        m.cnn_dims, m.cnn_depths, m.face_grid = (16, 32), (1, 1), (2, 2)
        m.hex_dim, m.hex_depth = 32, 2
        m.d_model, m.num_heads, m.ffn_dim, m.num_layers = 128, 4, 256, 1
        m.head_hidden = 128
    elif variant == "smoke":
        m.cnn_dims, m.cnn_depths, m.face_grid = (4, 8), (1, 1), (2, 2)
        m.hex_dim, m.hex_depth = 8, 1
        m.d_model, m.num_heads, m.ffn_dim, m.num_layers = 32, 2, 64, 1
        m.head_hidden = 16
        m.drop_path = 0.1
    return m


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variant = arg or "default"
    if variant not in ("default", "toy", "smoke"):
        raise ValueError(f"unknown variant {variant!r} of configs/convnext.py: default|toy|smoke")
    c = ml_collections.ConfigDict()
    c.variant = variant
    c.model = get_model_config(variant)
    # Per variant: (toy events, toy files, batch size, epochs, peak lr).
    sizes = {
        "default": (20000, 4, 256, 60, 5e-4),
        "toy": (4000, 5, 32, 8, 2e-3),
        "smoke": (320, 1, 16, 2, 1e-2),  # high lr: the loss must visibly fall in 80 steps
    }
    events, files, batch, epochs, lr = sizes[variant]

    c.data = ml_collections.ConfigDict()
    # ROOT file(s), directory or glob; comma-separated list allowed. "" = the embedded toy data
    # set, generated once by xecjax.simulate into toy_dir/<vertex>_<events>ev_<files>f_seed<seed>.
    c.data.path = ""
    c.data.toy_dir = "data/toy"  # git-ignored cache folder of the toy data set
    c.data.toy_events = events
    c.data.toy_files = files
    c.data.toy_seed = 0
    c.data.toy_vertex = "point"  # point | slanted | flat (see xecjax.simulate)
    c.data.train = ""  # explicit training files (override path + val_fraction when both set)
    c.data.val = ""  # explicit validation files
    c.data.val_fraction = 0.2  # fraction of the events held out for validation (by file range)
    c.data.split_seed = 0
    c.data.batch_size = batch  # global batch (events), split over all devices and processes
    c.data.chunk_size = 1000  # events read from ROOT at a time
    c.data.shuffle_buffer = 4 * 1000  # events mixed across files before batching
    c.data.reweight = "none"  # none | theta | phi | theta_phi (flatten the angle histogram)
    c.data.reweight_bins = 50
    c.data.fiducial = False  # keep only events in the fiducial volume (truth uvw)
    c.data.channel_dropout = 0.0  # probability of masking a sensor in training batches
    c.data.prefetch = 2  # batches prepared ahead of the device
    c.data.workers = 2  # reader threads (ROOT decompression + normalisation)

    c.norm = ml_collections.ConfigDict()
    c.norm.preset = "default"  # default | relative_npho (xecjax.data.Normaliser presets)
    # Overrides of single preset fields (None = the preset's value); DESIGN.md section 5.
    c.norm.npho_branch = None  # e.g. "relative_npho"
    c.norm.time_branch = None  # e.g. "relative_time"
    c.norm.npho_scheme = None  # log1p | sqrt | anscombe | linear
    c.norm.npho_scale = None  # s (photons)
    c.norm.npho_scale2 = None  # s2 (log1p only)
    c.norm.time_scale = None  # seconds
    c.norm.time_shift = None
    c.norm.npho_threshold = None  # photons; below it the time feature is the sentinel
    c.norm.sentinel_npho = None
    c.norm.sentinel_time = None

    c.optim = ml_collections.ConfigDict()
    c.optim.lr = lr  # peak learning rate
    c.optim.weight_decay = 0.05  # AdamW, not applied to biases, norms, GRN, position embeddings
    c.optim.b1 = 0.9
    c.optim.b2 = 0.999
    c.optim.schedule = "warmup_cosine"  # warmup_cosine | onecycle | constant (per step)
    c.optim.warmup_epochs = 1.0 if variant == "default" else 0.5  # linear warmup (epochs)
    c.optim.final_lr_ratio = 0.01  # lr at the end of the cosine / onecycle, relative to lr
    c.optim.grad_clip = 1.0  # global gradient-norm clip; <= 0 disables
    # EMA of the parameters (validation, best, export); < 0 disables. Its averaging window,
    # 1 / (1 - decay) steps, must be short against the run: toy and smoke runs are short.
    c.optim.ema_decay = {"default": 0.999, "toy": 0.99, "smoke": 0.9}[variant]
    c.optim.loss = "smooth_l1"  # smooth_l1 | l1 | mse | angular | gaussian_nll
    c.optim.beta = 1.0  # smooth_l1 transition (degrees)

    c.train = ml_collections.ConfigDict()
    c.train.epochs = epochs  # length of the schedule
    c.train.stop_after_epoch = 0  # end this process after N epochs (checkpointed); 0 = all
    c.train.eval_every = 1  # validate (EMA parameters) every N epochs and at the end
    c.train.log_every = 50  # steps between TensorBoard train-loss points
    c.train.checkpoint_every_steps = 0  # extra `last` checkpoints within an epoch; 0 = epoch ends
    c.train.resume = ""  # "" = fresh (refuses a workdir with checkpoints) | auto | PATH
    c.train.bf16 = False  # bfloat16 compute (parameters and optimiser stay float32)
    c.train.nan_policy = "stop"  # stop (keep the last good checkpoint) | skip (drop the batch)
    c.train.debug_nan_step = -1  # tests: make the loss NaN at this global step; -1 = off
    c.train.export_onnx = False  # export the best EMA model to <workdir>/model.onnx at the end
    c.train.seed = 0  # parameter init, dropout, data order
    c.train.progress = True  # tqdm progress bar

    c.tracking = ml_collections.ConfigDict()
    c.tracking.mlflow_uri = ""  # "" = sqlite:///mlruns.db in the working directory
    c.tracking.experiment = "gamma_angle"
    c.tracking.tensorboard = True  # <workdir>/tb
    return c
