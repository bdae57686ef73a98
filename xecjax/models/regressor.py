"""XECRegressor: faces -> shared CNN / hex encoder -> tokens -> fusion transformer -> angles.

The reference architecture of DESIGN.md section 6, layer for layer (27,314,950 parameters in
the default finegrid configuration). Input: the normalised sensor array [B, 4760, 2]
(channel 0 npho feature, channel 1 time feature). Output: [B, 2] = (theta, phi) in degrees,
or [B, 4] = (theta, phi, log_sigma_theta, log_sigma_phi) with `model.uncertainty`.

Faces are gathered with the geometry image maps (constants, not state):
  inner 93 x 44; US, DS 24 x 6; outer, by `model.outer_mode`:
    "finegrid": coarse PMTs upsampled x(5, 3) with npho / 15, centre patch x(3, 2) with
      npho / 6 pasted in (45 x 72), average-pooled 3 x 3 -> 15 x 24; one token.
    "split": outer coarse 9 x 24 and centre patch 5 x 6 (z x phi) as two tokens.
  top, bottom: 73 hex nodes each.
Tokens: [inner, us, ds, outer | outer_coarse, outer_center, top, bottom], plus with
`model.vertex_input` a "vertex" token: the measured positron vertex (xyzVTX, cm, scaled by
xecjax.normalise.VERTEX_SCALE_CM) through a small MLP, so that the angle heads can see where
the gamma came from (the model is then called with vertex=[B, 3]).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from xecjax import geometry
from xecjax import tasks as taskdefs
from xecjax.models.convnext import FaceBackbone
from xecjax.models.hexnext import HexEncoder
from xecjax.models.layers import (
    LN_EPS_TORCH,
    TransformerEncoderLayer,
    dense,
    dropout,
    gelu,
    layer_norm,
    split_rng,
)
from xecjax.normalise import VERTEX_SCALE_CM

OUTER_MODES = ("finegrid", "split")
OUTPUTS = ("angles", "vector", "point")


def compute_dtype(cfg: ml_collections.ConfigDict, dtype=jnp.float32):
    """The compute dtype of the layers: `dtype` (xecjax.models.build_model's argument,
    bfloat16 only when training with config.train.bf16), float32 by default.

    The model config, which travels into checkpoints and ONNX files, does not carry one (the
    parameters are float32 in both, and evaluation and export compute in float32). A config
    that still names another model.dtype is refused rather than silently ignored.
    """
    name = cfg.get("dtype", "float32")
    if name != "float32":
        raise ValueError(
            f"model.dtype = {name!r}: bfloat16 compute is set by config.train.bf16 only "
            "(the model config is float32, for evaluation and ONNX export)"
        )
    return jnp.dtype(dtype)


def output_kind(cfg: ml_collections.ConfigDict) -> str:
    """model.output: "angles" (the reference), "vector" or "point" (see output_dim)."""
    kind = cfg.get("output", "angles")
    if kind not in OUTPUTS:
        raise ValueError(f"model.output must be one of {OUTPUTS}, got {kind!r}")
    if kind != "angles" and cfg.get("uncertainty", False):
        raise ValueError(
            f"model.uncertainty (Gaussian sigmas of theta, phi) needs model.output = 'angles'; "
            f"with model.output = {kind!r} use model.kappa (von Mises-Fisher concentration)"
        )
    if kind == "angles" and cfg.get("kappa", False):
        raise ValueError("model.kappa needs model.output = 'vector' or 'point'")
    return kind


def output_dim(cfg: ml_collections.ConfigDict) -> int:
    """Width of the model output; columns 0, 1 are always (theta, phi) in degrees.

    "angles": 2, or 4 with model.uncertainty (+ log sigma_theta, log sigma_phi in log-degrees).
    "vector": 5 = (theta, phi, x, y, z of the unit direction), 6 with model.kappa (+ log kappa
    of a von Mises-Fisher distribution around the direction).
    "point": the vector's columns followed by the predicted conversion point (u, v, w) in cm:
    8, or 9 with model.kappa.
    """
    kind = output_kind(cfg)
    if kind == "angles":
        return 4 if cfg.get("uncertainty", False) else 2
    return (6 if cfg.get("kappa", False) else 5) + (3 if kind == "point" else 0)


def token_names(outer_mode: str, vertex: bool = False) -> tuple[str, ...]:
    """Token order of the fusion transformer for an outer mode (+ "vertex" last with
    model.vertex_input)."""
    extra = ("vertex",) if vertex else ()
    if outer_mode == "finegrid":
        return ("inner", "us", "ds", "outer", "top", "bottom", *extra)
    if outer_mode == "split":
        return ("inner", "us", "ds", "outer_coarse", "outer_center", "top", "bottom", *extra)
    raise ValueError(f"model.outer_mode must be one of {OUTER_MODES}, got {outer_mode!r}")


def check_vertex(vertex, wanted: bool, batch: int) -> None:
    """A model with model.vertex_input needs vertex [B, 3] (cm); one without refuses it."""
    if not wanted:
        if vertex is not None:
            raise ValueError("vertex given, but the model has no vertex input (model.vertex_input)")
        return
    if vertex is None:
        raise ValueError("model.vertex_input: the model needs vertex=[B, 3] (xyzVTX, cm)")
    if vertex.shape != (batch, 3):
        raise ValueError(f"vertex must be [{batch}, 3] (xyzVTX, cm), got {vertex.shape}")


class VertexEmbed(nnx.Module):
    """The measured positron vertex [B, 3] cm -> one fusion token [B, d]: dense -> GELU ->
    dense on vertex / VERTEX_SCALE_CM."""

    def __init__(self, d: int, *, dtype, rngs: nnx.Rngs):
        self.fc1 = dense(3, d, dtype, rngs)
        self.fc2 = dense(d, d, dtype, rngs)

    def __call__(self, vertex: jax.Array) -> jax.Array:
        v = vertex.astype(jnp.float32) / VERTEX_SCALE_CM
        return self.fc2(gelu(self.fc1(v.astype(self.fc1.kernel[...].dtype))))


def gather_faces(x: jax.Array, outer_mode: str) -> dict[str, jax.Array]:
    """Sensor array [B, 4760, 2] -> face images [B, H, W, 2] and hex faces [B, 73, 2]."""
    faces = {
        "inner": x[:, geometry.INNER_MAP],
        "us": x[:, geometry.US_MAP],
        "ds": x[:, geometry.DS_MAP],
        "top": x[:, geometry.TOP_IDS],
        "bottom": x[:, geometry.BOTTOM_IDS],
    }
    if outer_mode == "finegrid":
        fine = x[:, geometry.OUTER_FINE_MAP]  # [B, 45, 72, 2]
        # npho shared out over the fine cells of a PMT; time copied unchanged
        scale = np.stack([geometry.OUTER_FINE_SCALE, np.ones_like(geometry.OUTER_FINE_SCALE)], -1)
        fine = fine * jnp.asarray(scale, x.dtype)
        pz, pp = geometry.OUTER_FINE_POOL
        b, h, w, c = fine.shape
        faces["outer"] = fine.reshape(b, h // pz, pz, w // pp, pp, c).mean(axis=(2, 4))
    elif outer_mode == "split":
        faces["outer_coarse"] = x[:, geometry.OUTER_COARSE_MAP]  # [B, 9, 24, 2]
        faces["outer_center"] = x[:, geometry.OUTER_CENTER_MAP.T]  # [B, 5, 6, 2] (z x phi)
    else:
        token_names(outer_mode)  # raises with the valid modes
    return faces


class XECRegressor(nnx.Module):
    """The reference regressor; every architectural option comes from the model config."""

    def __init__(self, cfg: ml_collections.ConfigDict, *, rngs: nnx.Rngs, dtype=jnp.float32):
        dtype = compute_dtype(cfg, dtype)
        self.outer_mode = str(cfg.outer_mode)
        self.vertex_input = bool(cfg.get("vertex_input", False))
        self.tokens = token_names(self.outer_mode, self.vertex_input)
        d = int(cfg.d_model)
        self.backbone = FaceBackbone(
            cfg.cnn_dims,
            cfg.cnn_depths,
            face_grid=cfg.face_grid,
            drop_path=float(cfg.drop_path),
            dwconv=str(cfg.dwconv),
            dtype=dtype,
            rngs=rngs,
        )
        if self.backbone.out_features != d:
            raise ValueError(
                f"model.cnn_dims[-1] * prod(model.face_grid) = {self.backbone.out_features} "
                f"must equal model.d_model = {d} (one CNN face is one token)"
            )
        self.hex_encoder = HexEncoder(
            int(cfg.hex_dim),
            int(cfg.hex_depth),
            d,
            drop_path=float(cfg.drop_path),
            dtype=dtype,
            rngs=rngs,
        )
        self.vertex_embed = VertexEmbed(d, dtype=dtype, rngs=rngs) if self.vertex_input else None
        self.pos_embed = nnx.Param(
            nnx.initializers.truncated_normal(0.02)(rngs.params(), (len(self.tokens), d))
        )
        self.fusion = nnx.List(
            TransformerEncoderLayer(
                d,
                int(cfg.num_heads),
                int(cfg.ffn_dim),
                dropout=float(cfg.dropout),
                dtype=dtype,
                rngs=rngs,
            )
            for _ in range(int(cfg.num_layers))
        )
        self.output = output_kind(cfg)
        if self.output == "point":
            self.head = PointHead(len(self.tokens) * d, self.backbone.first_dim, cfg,
                                  dtype=dtype, rngs=rngs)  # fmt: skip
        else:
            self.head = RegressionHead.from_config(
                len(self.tokens) * d, cfg, dtype=dtype, rngs=rngs
            )
        self.tasks = task_heads(len(self.tokens) * d, cfg, dtype=dtype, rngs=rngs)
        self.dtype = dtype

    def encode(
        self,
        x: jax.Array,
        *,
        train: bool = False,
        rng: jax.Array | None = None,
        vertex: jax.Array | None = None,
    ) -> tuple[jax.Array, dict[str, jax.Array], jax.Array | None]:
        """The shared encoder: x [B, 4760, 2] normalised (, vertex [B, 3] cm) -> (fused tokens
        [B, T, d_model] in self.tokens order, the float32 face images and hex faces of
        gather_faces, the inner CNN's first-stage map [B, 92, 43, C] of a "point" model or
        None). The heads, and the decoders of a masked autoencoder, read these."""
        return self._encode(x, split_rng(rng, 3), train, vertex)

    def _encode(self, x, keys, train: bool, vertex):
        """encode() with the (cnn, hex, fusion) keys given (__call__ keeps its key streams)."""
        check_input(x)
        check_vertex(vertex, self.vertex_input, x.shape[0])
        r_cnn, r_hex, r_fusion = keys
        # faces gathered (and the outer fine grid pooled) in float32, then cast to the compute
        # dtype; the point head's light path keeps the float32 inner face
        faces32 = gather_faces(x.astype(jnp.float32), self.outer_mode)
        faces = {n: f.astype(self.dtype) for n, f in faces32.items()}
        # One backbone / hex-encoder call per face. (Batch-concatenating equal-shape faces
        # exports with wrong symbolic batch sizes in jax2onnx 0.17 and ONNX Runtime rejects it.)
        names = [n for n in self.tokens if n not in ("top", "bottom", "vertex")]
        feats, inner_map = {}, None
        for n, key in zip(names, split_rng(r_cnn, len(names)), strict=True):
            if n == "inner" and self.output == "point":
                feats[n], inner_map = self.backbone(faces[n], train=train, rng=key, return_map=True)
            else:
                feats[n] = self.backbone(faces[n], train=train, rng=key)
        for n, key in zip(("top", "bottom"), split_rng(r_hex, 2), strict=True):
            feats[n] = self.hex_encoder(faces[n], train=train, rng=key)
        if self.vertex_input:
            feats["vertex"] = self.vertex_embed(vertex)
        tokens = jnp.stack([feats[n] for n in self.tokens], axis=1)
        tokens = tokens + self.pos_embed[...].astype(tokens.dtype)
        for layer, key in zip(self.fusion, split_rng(r_fusion, len(self.fusion)), strict=True):
            tokens = layer(tokens, train=train, rng=key)
        return tokens, faces32, inner_map

    def __call__(
        self,
        x: jax.Array,
        *,
        train: bool = False,
        rng: jax.Array | None = None,
        tasks: bool = False,
        vertex: jax.Array | None = None,
    ) -> jax.Array:
        """x [B, 4760, 2] normalised (, vertex [B, 3] cm with model.vertex_input) -> [B, 2 | 4]
        float32 (degrees; log sigma in log-degrees)."""
        *r_enc, r_head = split_rng(rng, 4)
        tokens, faces32, inner_map = self._encode(x, r_enc, train, vertex)
        flat = tokens.reshape(tokens.shape[0], -1)
        if self.output == "point":
            light = faces32["inner"][..., 0]
            # with a vertex input the direction runs from the vertex to the predicted point
            out = self.head(flat, inner_map, light, train=train, rng=r_head, vertex=vertex)
        else:
            out = direction_output(
                self.head(flat, train=train, rng=r_head).astype(jnp.float32), self.output
            )
        # tasks=True: also the heads of the tasks beside the angle (xecjax.tasks)
        return with_tasks(out, self.tasks, flat, train, r_head, tasks)


def direction_output(out: jax.Array, kind: str) -> jax.Array:
    """Raw head output -> the model output of `kind` (output_dim): angles pass through;
    "vector" normalises the first 3 columns to the unit direction and puts (theta, phi) first."""
    if kind == "angles":
        return out
    vec = out[:, :3] / jnp.maximum(jnp.linalg.norm(out[:, :3], axis=-1, keepdims=True), 1e-12)
    return jnp.concatenate([geometry.vec_to_angles(vec), vec, out[:, 3:]], axis=-1)


def check_input(x: jax.Array) -> None:
    """Every model takes the normalised detector input [B, 4760, 2]; anything else is an error."""
    if x.ndim != 3 or x.shape[1:] != (geometry.N_SENSORS, 2):
        raise ValueError(f"model input must be [B, {geometry.N_SENSORS}, 2], got {x.shape}")


class RegressionHead(nnx.Module):
    """Dense hidden -> LN -> GELU -> Dropout -> Dense out (the reference head)."""

    def __init__(
        self,
        din: int,
        hidden: int,
        dout: int,
        *,
        dropout: float,
        dtype,
        rngs: nnx.Rngs,
        angle_bias: bool = True,
    ):
        self.fc1 = dense(din, hidden, dtype, rngs)
        self.norm = layer_norm(hidden, LN_EPS_TORCH, dtype, rngs)
        self.fc2 = dense(hidden, dout, dtype, rngs)
        # Start at the centre of the acceptance rather than at (0, 0): the angles are regressed
        # in degrees (theta ~ 90), which a zero bias would take thousands of steps to reach.
        # A direction vector (output "vector": dout 3 or 4) starts at the same direction.
        # angle_bias=False (the heads of the other tasks, normalised targets): zero.
        bias = np.zeros(dout, np.float32)
        if angle_bias and dout in (3, 4):
            bias[:3] = geometry.angles_to_vec(*geometry.ACCEPTANCE_CENTER_DEG)
        elif angle_bias:
            bias[:2] = geometry.ACCEPTANCE_CENTER_DEG
        self.fc2.bias[...] = jnp.asarray(bias, self.fc2.bias[...].dtype)
        self.dropout = dropout

    @classmethod
    def from_config(
        cls, din: int, cfg: ml_collections.ConfigDict, *, dtype, rngs: nnx.Rngs
    ) -> RegressionHead:
        """The head every model family ends in: sizes from model.head_hidden / head_dropout."""
        dout = output_dim(cfg)
        return cls(
            din,
            int(cfg.head_hidden),
            dout - 2 if output_kind(cfg) == "vector" else dout,  # (x, y, z[, log kappa])
            dropout=float(cfg.head_dropout),
            dtype=dtype,
            rngs=rngs,
        )

    def __call__(self, x: jax.Array, *, train: bool, rng: jax.Array | None) -> jax.Array:
        """x [B, din] -> [B, dout] float32."""
        h = dropout(gelu(self.norm(self.fc1(x))), self.dropout, train=train, rng=rng)
        if h.dtype == jnp.float32:
            return self.fc2(h)
        # bfloat16 compute: the output layer's product accumulated and returned in float32,
        # plus the float32 bias. Its outputs are degrees around 90 (bfloat16 steps of 0.5 deg
        # there), unit-vector components or cm: a bfloat16 result or bias would quantise them.
        kernel = self.fc2.kernel[...].astype(h.dtype)
        return jnp.matmul(h, kernel, preferred_element_type=jnp.float32) + self.fc2.bias[...]


class TaskHeads(nnx.Module):
    """One RegressionHead per task beside the angle (xecjax.tasks), on the shared encoder's
    features, and the per-task log-variances of loss_balance "auto" (angle first; trained only
    under "auto": without it they get no gradient and, of rank 1, no weight decay).

    A "point" model already predicts the conversion point (the last 3 columns of its output,
    trained towards xyzTruth): its uvw task is that point, not a head of its own (an MLP on
    the fusion tokens measured 5.7 cm uvw_dist_68pct on the toy, the point head 2.3 cm).
    """

    def __init__(self, din: int, cfg: ml_collections.ConfigDict, *, dtype, rngs: nnx.Rngs):
        self.names = taskdefs.model_tasks(cfg)
        self.from_point = "uvw" in self.names and cfg.get("output", "angles") == "point"
        self.heads = tuple(n for n in self.names if not (n == "uvw" and self.from_point))
        self.sigma = taskdefs.model_sigma(cfg)  # heads that also give log sigma
        # (offset, scale) as tuples of floats: static, not state (arrays would become state)
        self.norm = tuple(
            tuple(tuple(float(v) for v in a) for a in taskdefs.target_norm(cfg, n))
            for n in self.heads
        )
        for n in self.heads:
            width = taskdefs.WIDTH[n] * (2 if n in self.sigma else 1)  # values (, log sigma)
            head = RegressionHead(din, int(cfg.head_hidden), width,
                                  dropout=float(cfg.head_dropout), dtype=dtype, rngs=rngs,
                                  angle_bias=False)  # fmt: skip
            setattr(self, f"{n}_head", head)
        self.log_var = nnx.Param(jnp.zeros((1 + len(self.names),), jnp.float32))

    def __call__(self, x: jax.Array, out: jax.Array, *, train: bool, rng: jax.Array | None) -> dict:
        """x [B, din], the model's angle output [B, C] -> {task: [B, width] float32 in
        physical units (offset + scale * head), "log_var": [1 + tasks] (angle first)}."""
        res = {}
        keys = split_rng(rng, len(self.heads))
        for n, (offset, scale), key in zip(self.heads, self.norm, keys, strict=True):
            raw = getattr(self, f"{n}_head")(x, train=train, rng=key).astype(jnp.float32)
            w = taskdefs.WIDTH[n]
            scale = jnp.asarray(scale, jnp.float32)
            res[n] = jnp.asarray(offset, jnp.float32) + scale * raw[:, :w]
            if n in self.sigma:  # log sigma in physical units (the head's in units of scale)
                res[f"{n}_log_sigma"] = jnp.log(scale) + raw[:, w:]
        if self.from_point:
            res["uvw"] = out[..., -3:].astype(jnp.float32)
        res["log_var"] = self.log_var[...]  # of loss_balance "auto" (xecjax.tasks.make_loss)
        sig = tuple(f"{n}_log_sigma" for n in self.names if n in self.sigma)
        return {k: res[k] for k in (*self.names, *sig, "log_var")}


def task_heads(din: int, cfg: ml_collections.ConfigDict, *, dtype, rngs: nnx.Rngs):
    """TaskHeads when the model config names tasks (model.tasks), else None."""
    return TaskHeads(din, cfg, dtype=dtype, rngs=rngs) if taskdefs.model_tasks(cfg) else None


def with_tasks(out: jax.Array, heads, feats: jax.Array, train: bool, rng, want: bool):
    """A model's return value: the angle output, or with `want` (out, {task: [B, width]})."""
    if not want:
        return out
    if heads is None:
        return out, {}
    key = None if rng is None else jax.random.fold_in(rng, 1)
    return out, heads(feats, out, train=train, rng=key)


def to_first_map_grid(image):
    """Inner-face values [..., 93, 44, C] -> [..., 92, 43, C] at the pixels of the CNN's
    first-stage map: pixel (i, j) sits between inner sensors i..i+1, j..j+1 (4 x 4 stem with
    padding 1), so each is the mean of those four. NumPy or jax arrays."""
    return (
        image[..., :-1, :-1, :]
        + image[..., 1:, :-1, :]
        + image[..., :-1, 1:, :]
        + image[..., 1:, 1:, :]
    ) / 4


@functools.cache
def first_map_uv() -> np.ndarray:
    """(u, v) cm of the inner CNN's first-stage pixels, [92, 43, 2]. A constant, not module
    state."""
    return to_first_map_grid(geometry.INNER_UV)


class PointHead(nnx.Module):
    """The direction as the line from the target centre to a predicted conversion point.

    The shower is localised on the inner face by a soft-argmax: a per-pixel logit on the inner
    CNN's full-resolution map, softmax over the face, and the weighted mean of the pixels'
    (u, v) (geometry.INNER_UV; sub-pixel by construction). An MLP on the fusion tokens and the
    soft-argmax-pooled local features adds (du, dv) and the depth w (softplus, cm), and
    optionally log kappa. (u, v, w) -> xyz (geometry.uvw_to_xyz) -> unit vector from the origin.
    The correction layer starts at zero, so an untrained model is a learned-window centroid at
    the typical depth. With model.vertex_input the line starts at the measured vertex instead.
    The point itself is output too (last 3 columns) and can be trained towards the true
    conversion point (config.optim.point_weight, losses.point_loss): the depth, which sets
    theta, then has a direct target.
    """

    INIT_DEPTH_CM = 5.0
    INIT_LIGHT_SCALE = 8.0

    def __init__(self, din: int, map_dim: int, cfg, *, dtype, rngs: nnx.Rngs):
        self.logit = dense(map_dim, 1, dtype, rngs)
        # A direct path from the input light to the logits: the CNN map is layer-normalised
        # per pixel and so carries the local intensity only weakly. With the log1p feature,
        # exp(s2 * feature) ~ npho / s: the initial scale weights pixels ~ npho^2.
        self.light_scale = nnx.Param(jnp.asarray(self.INIT_LIGHT_SCALE, jnp.float32))
        kappa = bool(cfg.get("kappa", False))
        self.mlp = RegressionHead(
            din + map_dim,
            int(cfg.head_hidden),
            4 if kappa else 3,
            dropout=float(cfg.head_dropout),
            dtype=dtype,
            rngs=rngs,
        )
        self.mlp.fc2.kernel[...] = jnp.zeros_like(self.mlp.fc2.kernel[...])
        bias = np.zeros(4 if kappa else 3, np.float32)
        bias[2] = np.log(np.expm1(self.INIT_DEPTH_CM))  # softplus^-1
        if kappa:
            bias[3] = np.log(1.0 / np.deg2rad(1.0) ** 2)  # kappa ~ 1/sigma^2, sigma = 1 deg
        self.mlp.fc2.bias[...] = jnp.asarray(bias)

    def __call__(
        self,
        tokens: jax.Array,
        fmap: jax.Array,
        light: jax.Array,
        *,
        train: bool,
        rng,
        vertex: jax.Array | None = None,
    ) -> jax.Array:
        """tokens [B, D], fmap [B, 92, 43, C] first-stage inner map, light [B, 93, 44] the
        inner face's npho feature -> [B, 8 | 9] (theta, phi, unit vector[, log kappa], u, v, w).
        The direction is from the target centre to the point, or from `vertex` [B, 3] cm (the
        measured positron vertex of a model with model.vertex_input)."""
        b, h, w, c = fmap.shape
        pixel_uv = first_map_uv()
        if (h, w) != pixel_uv.shape[:2]:
            raise ValueError(f"PointHead: inner map {fmap.shape[1:3]} != {pixel_uv.shape[:2]}")
        light = to_first_map_grid(light.astype(jnp.float32)[..., None])
        logits = self.logit(fmap).reshape(b, h * w).astype(jnp.float32)
        logits = logits + self.light_scale[...] * light.reshape(b, h * w)
        weights = jax.nn.softmax(logits, axis=-1)  # float32
        # the soft-argmax coordinates: a float32 sum in a bfloat16 model too (cm; B P 2 terms)
        uv = weights @ jnp.asarray(pixel_uv.reshape(h * w, 2))
        # the soft-argmax-pooled features: in the compute dtype, as the MLP they feed
        local = jnp.einsum("bp,bpc->bc", weights.astype(fmap.dtype), fmap.reshape(b, h * w, c))
        extra = self.mlp(
            jnp.concatenate([tokens, local.astype(tokens.dtype)], -1), train=train, rng=rng
        )  # float32
        uvw = jnp.stack([uv[:, 0] + extra[:, 0], uv[:, 1] + extra[:, 1],
                         jax.nn.softplus(extra[:, 2])], -1)  # fmt: skip
        xyz = geometry.uvw_to_xyz(uvw)
        if vertex is not None:
            xyz = xyz - vertex.astype(jnp.float32)
        out = direction_output(jnp.concatenate([xyz, extra[:, 3:]], -1), "vector")
        return jnp.concatenate([out, uvw], -1)


def build(cfg: ml_collections.ConfigDict, *, rngs: nnx.Rngs, dtype=jnp.float32) -> XECRegressor:
    """Entry point used by xecjax.models.build_model for model.name == "regressor"."""
    return XECRegressor(cfg, rngs=rngs, dtype=dtype)
