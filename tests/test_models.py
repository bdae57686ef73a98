"""Models: shapes, the reference parameter count, layers against references, gradients,
train/eval behaviour, constants outside the params, ONNX export parity."""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from xecjax import geometry
from xecjax.export import onnx_function
from xecjax.models import build_model, count_params, make_apply
from xecjax.models.layers import GRN, bilinear_matrix, dense, depthwise_conv, resize_bilinear
from xecjax.models.regressor import first_map_uv, output_dim

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
# XLA CPU compiles dominate these tests; LLVM -O0 halves them (results are the same math).
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def model_config(family: str, variant: str, **overrides) -> ml_collections.ConfigDict:
    spec = importlib.util.spec_from_file_location(f"cfg_{family}", CONFIGS / f"{family}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cfg = module.get_model_config(variant)
    cfg.update(overrides)
    return cfg


SMOKE = {
    "regressor_finegrid": ("convnext", {}),
    "regressor_split": ("convnext", {"outer_mode": "split"}),
    "regressor_uncertainty": ("convnext", {"uncertainty": True}),
    "graph": ("graph", {}),
    "graph_mean_uncertainty": ("graph", {"pooling": "mean", "uncertainty": True}),
    "regressor_vector": ("convnext", {"output": "vector"}),
    "regressor_point": ("convnext", {"output": "point", "kappa": True}),
    "graph_vector_kappa": ("graph", {"output": "vector", "kappa": True}),
}


def fast_jit(fn, **kwargs):
    return jax.jit(fn, compiler_options=FAST_COMPILE, **kwargs)


def smoke_apply(name: str, **overrides):
    """(config, params, apply_fn) of a smoke model, cached: compiles dominate test time."""
    return _smoke_apply(name, tuple(sorted(overrides.items())))


@functools.lru_cache(maxsize=16)
def _smoke_apply(name: str, overrides: tuple):
    family, base = SMOKE[name]
    cfg = model_config(family, "smoke", **{**base, **dict(overrides)})
    params, apply_fn = make_apply(build_model(cfg, rngs=nnx.Rngs(0)))
    return cfg, params, apply_fn


def sensor_input(batch: int, seed: int = 0) -> jax.Array:
    """Plausible normalised input: npho feature >= 0 with a few sentinels, time around 0."""
    rng = np.random.default_rng(seed)
    x = np.stack(
        [rng.exponential(0.3, (batch, 4760)), rng.normal(0.0, 0.5, (batch, 4760))], -1
    ).astype(np.float32)
    x[:, rng.choice(4760, 40, replace=False)] = -1.0
    return jnp.asarray(x)


@pytest.mark.parametrize("name", sorted(SMOKE))
def test_output_shapes_batch_1_and_3(name):
    # shapes by abstract evaluation (no compile); values are checked in the ONNX parity test
    cfg, params, apply_fn = smoke_apply(name)
    out_dim = output_dim(cfg)
    assert out_dim == {"angles": 4 if cfg.uncertainty else 2, "vector": 5 + cfg.kappa,
                       "point": 8 + cfg.kappa}[cfg.output]  # fmt: skip
    for batch in (1, 3):
        y = jax.eval_shape(lambda p, x: apply_fn(p, x, False, None), params, sensor_input(batch))
        assert y.shape == (batch, out_dim) and y.dtype == jnp.float32


def test_reference_parameter_count_and_blocks():
    cfg = model_config("convnext", "default")
    model = nnx.eval_shape(lambda: build_model(cfg, rngs=nnx.Rngs(0)))
    _, params, rest = nnx.split(model, nnx.Param, ...)
    assert count_params(params) == 27_314_950
    blocks = {name: count_params(params[name]) for name in params}
    assert blocks == {
        "backbone": 140_768,
        "hex_encoder": 401_444,
        "fusion": 25_192_448,
        "head": 1_574_146,
        "pos_embed": 6_144,
    }
    assert not jax.tree_util.tree_leaves(rest)  # nothing but parameters is state
    # split mode: one more token (pos embedding and head input grow by 1024 rows)
    cfg_split = model_config("convnext", "default", outer_mode="split")
    model = nnx.eval_shape(lambda: build_model(cfg_split, rngs=nnx.Rngs(0)))
    assert count_params(nnx.state(model, nnx.Param)) == 27_314_950 + 1024 + 1024 * 256


def _numpy_bilinear(img: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Per-pixel half-pixel bilinear (torch align_corners=False), img [H, W]."""
    h, w = img.shape
    out = np.zeros((out_h, out_w))
    for oy in range(out_h):
        sy = max((oy + 0.5) * h / out_h - 0.5, 0.0)
        y0 = int(np.floor(sy))
        y1, fy = min(y0 + 1, h - 1), sy - y0
        for ox in range(out_w):
            sx = max((ox + 0.5) * w / out_w - 0.5, 0.0)
            x0 = int(np.floor(sx))
            x1, fx = min(x0 + 1, w - 1), sx - x0
            top = (1 - fx) * img[y0, x0] + fx * img[y0, x1]
            bottom = (1 - fx) * img[y1, x0] + fx * img[y1, x1]
            out[oy, ox] = (1 - fy) * top + fy * bottom
    return out


@pytest.mark.parametrize("src,dst", [((46, 21), (4, 4)), ((5, 7), (12, 9)), ((3, 3), (4, 4))])
def test_resize_matches_numpy_half_pixel_bilinear(src, dst):
    x = np.random.default_rng(1).normal(size=(2, *src, 3)).astype(np.float32)
    y = np.asarray(resize_bilinear(jnp.asarray(x), dst))
    assert y.shape == (2, *dst, 3)
    for b in range(2):
        for c in range(3):
            np.testing.assert_allclose(
                y[b, :, :, c], _numpy_bilinear(x[b, :, :, c], *dst), 1e-5, 1e-5
            )
    # 46 -> 4: src rows 5.25, 16.75, 28.25, 39.75 (no antialias: only 2 rows each)
    assert np.count_nonzero(bilinear_matrix(46, 4)[0]) == 2
    np.testing.assert_array_equal(bilinear_matrix(7, 7), np.eye(7, dtype=np.float32))


@pytest.mark.parametrize("impl", ["toeplitz", "direct"])
def test_depthwise_conv_matches_xla_with_gradients(impl):
    """Both CPU forms equal XLA's grouped conv, value and both gradients ("direct" has its own
    VJP: the flipped-kernel sum for the input, the toeplitz matmul for the kernel)."""
    kx, kw = jax.random.split(jax.random.key(3))
    x = jax.random.normal(kx, (2, 11, 9, 5))
    w = jax.random.normal(kw, (7, 7, 5))
    ct = jnp.sin(jnp.arange(x.size, dtype=jnp.float32)).reshape(x.shape)

    def loss(impl):
        return lambda x, w: jnp.sum(depthwise_conv(x, w, impl) * ct)

    np.testing.assert_allclose(
        depthwise_conv(x, w, impl), depthwise_conv(x, w, "xla"), rtol=1e-5, atol=1e-5
    )
    grads = jax.grad(loss(impl), (0, 1))(x, w)
    for g_s, g_x in zip(grads, jax.grad(loss("xla"), (0, 1))(x, w), strict=True):
        np.testing.assert_allclose(g_s, g_x, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="model.dwconv must be one of"):
        depthwise_conv(x, w, "fft")


@pytest.mark.parametrize(
    "impl,use_native", [("direct", True), ("direct", False), ("toeplitz", False)]
)
def test_convnext_block_cpu_form_equals_plain_graph(impl, use_native, monkeypatch):
    """The CPU forms of the ConvNeXt block (hand-written VJP of LN -> Dense -> GELU -> GRN ->
    Dense, GRN folded; direct: the depthwise conv's own VJP too, with xecjax.native's kernels
    or, where they are not built, the pure-JAX ones) equal the plain autodiff graph of the
    "xla" form: value and every parameter and input gradient, with non-zero GRN gamma and beta,
    in train mode with drop path."""
    from xecjax import native
    from xecjax.models.layers import ConvNeXtBlock

    if use_native and not native.available():
        pytest.skip("native CPU kernels not built")
    if not use_native:
        monkeypatch.setattr(native, "available", lambda: False)

    keys = jax.random.split(jax.random.key(6), 4)
    x = jax.random.normal(keys[0], (3, 10, 7, 8))
    ct = jax.random.normal(keys[1], x.shape)
    states = []
    for form in (impl, "xla"):
        blk = ConvNeXtBlock(8, drop_path=0.3, dwconv=form, dtype=jnp.float32, rngs=nnx.Rngs(0))
        blk.grn.gamma[...] = jax.random.normal(keys[2], (32,))
        blk.grn.beta[...] = jax.random.normal(keys[3], (32,))
        blk.norm.scale[...] = 1.0 + 0.1 * jax.random.normal(keys[3], (8,))
        states.append(nnx.split(blk))

    def loss(gdef):
        return lambda state, x: jnp.sum(
            nnx.merge(gdef, state)(x, train=True, rng=jax.random.key(1)) * ct
        )

    (g_cpu, s_cpu), (g_xla, s_xla) = states
    np.testing.assert_allclose(loss(g_cpu)(s_cpu, x), loss(g_xla)(s_xla, x), rtol=1e-5)
    got = jax.grad(loss(g_cpu), (0, 1))(s_cpu, x)
    want = jax.grad(loss(g_xla), (0, 1))(s_xla, x)
    for (path, a), b in zip(
        jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(want), strict=True
    ):
        assert float(jnp.max(jnp.abs(b))) > 0, path
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5, err_msg=str(path))


@pytest.mark.parametrize("onnx", [False, True])
@pytest.mark.parametrize("spatial", [(9, 7), (5,)])
def test_grn_folded_into_dense_equals_grn_then_dense(spatial, onnx):
    """GRN.then_dense (the GRN factor folded into per-sample kernels, as the CPU forms and the
    "onnx" form of the ConvNeXt block use it; onnx: sum of squares by matmul, flat product):
    value and every gradient equal dense(grn(x)), with non-zero gamma and beta, over an image
    and over nodes."""
    keys = jax.random.split(jax.random.key(4), 3)
    grn, lin = GRN(4), dense(4, 6, jnp.float32, nnx.Rngs(0))
    grn.gamma[...] = jax.random.normal(keys[0], (4,))
    grn.beta[...] = jax.random.normal(keys[1], (4,))
    x = jax.random.normal(keys[2], (3, *spatial, 4))
    ct = jnp.cos(jnp.arange(3 * np.prod(spatial) * 6, dtype=jnp.float32)).reshape(3, *spatial, 6)
    gdef, state = nnx.split((grn, lin))

    def loss(folded):
        def f(state, x):
            g, d = nnx.merge(gdef, state)
            return jnp.sum((g.then_dense(x, d, onnx=onnx) if folded else d(g(x))) * ct)

        return f

    np.testing.assert_allclose(loss(True)(state, x), loss(False)(state, x), rtol=1e-5, atol=1e-5)
    for a, b in zip(
        jax.tree.leaves(jax.grad(loss(True), (0, 1))(state, x)),
        jax.tree.leaves(jax.grad(loss(False), (0, 1))(state, x)),
        strict=True,
    ):
        assert float(jnp.max(jnp.abs(b))) > 0
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("onnx", [False, True])
def test_patch_conv_equals_strided_conv(onnx):
    """The 2x2 stride-2 downsampling (einsum, or the "onnx" transpose + matmul) is lax.conv with
    that kernel, odd last row / column dropped."""
    from xecjax.models.convnext import _patch_conv

    keys = jax.random.split(jax.random.key(5), 3)
    x = jax.random.normal(keys[0], (2, 9, 6, 3))
    kernel, bias = jax.random.normal(keys[1], (2, 2, 3, 5)), jax.random.normal(keys[2], (5,))
    want = jax.lax.conv_general_dilated(
        x, kernel, (2, 2), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    got = _patch_conv(x, kernel, bias, onnx=onnx)
    assert got.shape == (2, 4, 3, 5)
    np.testing.assert_allclose(got, want + bias, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["regressor_finegrid", "graph", "regressor_point"])
def test_gradients_finite_and_nonzero_for_every_parameter(name):
    _, params, apply_fn = smoke_apply(name)
    x, target = sensor_input(3), jnp.array([[90.0, 0.0], [80.0, 20.0], [100.0, -30.0]])
    if name == "regressor_point":
        # its correction layer starts at zero (a pure soft-argmax), which blocks the gradient
        # to the tokens at initialisation: give it trained-like small weights
        def perturb(path, a):
            if "fc2" in jax.tree_util.keystr(path) and "kernel" in jax.tree_util.keystr(path):
                return a + 0.02 * jax.random.normal(jax.random.key(1), a.shape, a.dtype)
            return a

        params = jax.tree_util.tree_map_with_path(perturb, params)

    def loss(p):
        y = apply_fn(p, x, True, jax.random.key(0))
        # every output column, so that every head parameter (kappa, depth) gets a gradient
        return jnp.mean(jnp.square(y[:, :2] - target)) + jnp.mean(jnp.square(y[:, 2:]))

    grads = fast_jit(jax.grad(loss))(params)
    for path, g in jax.tree_util.tree_leaves_with_path(grads):
        where = jax.tree_util.keystr(path)
        assert bool(jnp.all(jnp.isfinite(g))), where
        assert float(jnp.max(jnp.abs(g))) > 0.0, where


@pytest.mark.parametrize("name", ["regressor_finegrid", "graph"])
def test_train_and_eval_differ_only_by_dropout_and_drop_path(name):
    x, key = sensor_input(3), jax.random.key(7)
    no_noise = dict(dropout=0.0, head_dropout=0.0, drop_path=0.0)
    if name == "graph":
        no_noise.pop("dropout")
    _, params, apply_fn = smoke_apply(name, **no_noise)
    apply_fn = fast_jit(apply_fn, static_argnums=2)
    np.testing.assert_allclose(
        apply_fn(params, x, True, key), apply_fn(params, x, False, None), rtol=1e-6, atol=1e-6
    )
    _, params, apply_fn = smoke_apply(name, head_dropout=0.5, drop_path=0.5)
    apply_fn = fast_jit(apply_fn, static_argnums=2)
    train1, train2 = apply_fn(params, x, True, key), apply_fn(params, x, True, key)
    np.testing.assert_array_equal(train1, train2)  # the rng alone decides
    assert not np.allclose(train1, apply_fn(params, x, False, None), atol=1e-4)
    assert not np.allclose(train1, apply_fn(params, x, True, jax.random.key(8)), atol=1e-4)
    with pytest.raises(ValueError, match="rng"):
        apply_fn(params, x, True, None)


@pytest.mark.parametrize("name", ["regressor_split", "graph"])
def test_index_tables_are_constants_not_params(name):
    family, base = SMOKE[name]
    model = build_model(model_config(family, "smoke", **base), rngs=nnx.Rngs(0))
    _, params, rest = nnx.split(model, nnx.Param, ...)
    assert not jax.tree_util.tree_leaves(rest)
    leaves = jax.tree_util.tree_leaves(params)
    assert all(leaf.dtype == jnp.float32 for leaf in leaves)
    # no parameter has the size of a sensor table (4760 ids, 73 hex nodes, a face map)
    table_sizes = {
        geometry.N_SENSORS,
        geometry.N_HEX,
        geometry.INNER_MAP.size,
        geometry.OUTER_FINE_MAP.size,
        geometry.HEX_NEIGHBORS.size,
    }
    assert not any(leaf.shape and leaf.shape[0] in table_sizes for leaf in leaves)


def test_build_model_rejects_bad_options():
    with pytest.raises(ValueError, match="model.name"):
        build_model(ml_collections.ConfigDict({"name": "resnet"}), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="outer_mode"):
        build_model(model_config("convnext", "smoke", outer_mode="coarse"), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="d_model"):
        build_model(model_config("convnext", "smoke", d_model=48), rngs=nnx.Rngs(0))
    for family in ("convnext", "graph"):  # bf16 compute has one switch: config.train.bf16
        with pytest.raises(ValueError, match="config.train.bf16"):
            build_model(model_config(family, "smoke", dtype="bfloat16"), rngs=nnx.Rngs(0))
    _, params, apply_fn = smoke_apply("graph")
    with pytest.raises(ValueError, match="4760"):
        apply_fn(params, jnp.zeros((2, 4092, 2)), False, None)


@pytest.mark.parametrize("name", ["regressor_vector", "regressor_point", "graph_vector_kappa"])
def test_direction_outputs_are_unit_vectors_and_their_angles(name):
    """vector / point heads: columns 2:5 a unit vector, columns 0:2 exactly its (theta, phi);
    a point model's direction is the line from the origin to its (u, v, w) output."""
    cfg, params, apply_fn = smoke_apply(name)
    y = np.asarray(fast_jit(apply_fn, static_argnums=2)(params, sensor_input(5), False, None))
    vec = y[:, 2:5]
    np.testing.assert_allclose(np.linalg.norm(vec, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(y[:, :2], geometry.vec_to_angles(vec), atol=1e-4)
    if cfg.output == "point":
        xyz = geometry.uvw_to_xyz(y[:, -3:].astype(np.float64))
        np.testing.assert_allclose(vec, xyz / np.linalg.norm(xyz, axis=1, keepdims=True),
                                   atol=1e-6)  # fmt: skip
        assert np.all(y[:, -1] > 0)  # depth w = softplus(...) > 0


def test_point_head_soft_argmax_finds_a_bright_spot():
    """An untrained point model on a bright 3 x 3 patch of inner SiPMs (nothing else lit):
    the soft-argmax (u, v) lands on the patch centre's sensor position (geometry), which
    checks the pixel coordinates of the first-stage map (half-pixel shift of the stem)."""
    cfg, params, apply_fn = smoke_apply("regressor_point")
    x = np.zeros((2, geometry.N_SENSORS, 2), np.float32)
    x[..., 1] = -1.0
    centres = [(30, 10), (70, 35)]  # (i_phi, i_z)
    for b, (i, j) in enumerate(centres):
        ids = geometry.INNER_MAP[i - 1 : i + 2, j - 1 : j + 2].ravel()
        x[b, ids, 0] = 1.7  # ~ log1p(1e6 / 1000) / 4.08: a million photons each
    y = np.asarray(apply_fn(params, jnp.asarray(x), False, None))
    for b, (i, j) in enumerate(centres):
        np.testing.assert_allclose(y[b, -3:-1], geometry.INNER_UV[i, j], atol=0.05)
    assert first_map_uv().shape == (geometry.INNER_NPHI - 1, geometry.INNER_NZ - 1, 2)


def test_output_options_are_checked():
    with pytest.raises(ValueError, match="model.output"):
        build_model(model_config("convnext", "smoke", output="polar"), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="kappa"):
        build_model(model_config("convnext", "smoke", output="vector", uncertainty=True),
                    rngs=nnx.Rngs(0))  # fmt: skip
    with pytest.raises(ValueError, match="kappa"):
        build_model(model_config("convnext", "smoke", kappa=True), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="point"):
        build_model(model_config("graph", "smoke", output="point"), rngs=nnx.Rngs(0))


@pytest.mark.parametrize("name", ["regressor_finegrid", "graph", "regressor_point"])
def test_smoke_model_exports_to_onnx_and_matches(name, tmp_path):
    jax2onnx = pytest.importorskip("jax2onnx")
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    cfg, params, apply_fn = smoke_apply(name)

    def predict(x):  # pure, closing over the parameters
        return apply_fn(params, x, False, None)

    predict_jax = fast_jit(predict)

    # What xecjax.export exports: the same parameters with the depthwise convs as grouped Conv
    # (jax2onnx takes ~5 min over the 49 shifted products per block of the "direct" form).
    proto = jax2onnx.to_onnx(
        onnx_function(apply_fn, params, cfg),
        [("batch_size", 4760, 2)],
        opset=18,
        input_names=["input"],
        output_names=["output"],
        return_mode="proto",
    )
    path = tmp_path / "model.onnx"
    onnx.save(proto, path)
    onnx.checker.check_model(str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert inp.name == "input" and inp.shape == ["batch_size", 4760, 2] and out.name == "output"
    x7 = np.asarray(sensor_input(7, seed=7))
    for x in (x7[:1], x7):
        (y,) = session.run(["output"], {"input": x})
        y_jax = np.asarray(predict_jax(jnp.asarray(x)))[:, :2]  # the ONNX output: theta, phi
        assert y_jax.shape == (len(x), 2) and np.all(np.isfinite(y_jax))
        np.testing.assert_allclose(y, y_jax, rtol=1e-4, atol=1e-4)
    # events are independent: event 0 alone and inside a batch of 7 give the same answer
    np.testing.assert_allclose(predict_jax(x7[:1]), predict_jax(x7)[:1], rtol=1e-5, atol=2e-5)


# ----------------------------------------------------------------------------------------------
# bfloat16 compute (config.train.bf16): the layers of a model built with dtype=bfloat16
# compute in bfloat16; parameters, optimiser state, EMA and the loss stay float32.
# ----------------------------------------------------------------------------------------------
BF16_CASES = {  # smoke model name -> (config overrides)
    "regressor_finegrid": {},
    "regressor_point": {"optim.point_weight": 1.0},
    "graph": {},
}


def bf16_train_setup(name: str, dtype, **model_overrides):
    """(config, model, state, train step, batch) of a smoke model built with `dtype`."""
    from xecjax import losses
    from xecjax.config import load_config
    from xecjax.optim import make_optimizer, make_schedule
    from xecjax.steps import init_state, make_train_step

    family, base = SMOKE[name]
    config = load_config(f"{CONFIGS / family}.py:smoke")
    config.model = model_config(family, "smoke", **{**base, **model_overrides})
    for key, value in BF16_CASES[name].items():
        section, field = key.split(".")
        config[section][field] = value
    config.train.bf16 = dtype == jnp.bfloat16
    model = build_model(config.model, rngs=nnx.Rngs(0), dtype=dtype)
    params, apply_fn = make_apply(model)
    tx = make_optimizer(config.optim, make_schedule(config.optim, 10, 1))
    loss_fn = losses.get_loss(config.optim.loss, config.optim.beta)
    state = init_state(params, tx, 1)
    x = sensor_input(4)
    rng = np.random.default_rng(0)
    batch = {
        "x": x,
        "angles": jnp.asarray(rng.uniform([70.0, -30.0], [110.0, 30.0], (4, 2)), jnp.float32),
        "xyzTruth": jnp.asarray(rng.normal(0.0, 5.0, (4, 3)) + [-65.0, 0.0, 0.0], jnp.float32),
        "weight": jnp.ones(4, jnp.float32),
        "valid": jnp.ones(4, jnp.float32),
    }
    return config, model, state, make_train_step(apply_fn, tx, loss_fn, config), batch


def _sub_jaxprs(value):
    """The jaxprs inside an equation parameter (pjit, custom_jvp/vjp calls, scan, cond, while,
    remat: a ClosedJaxpr, a Jaxpr, or tuples of them)."""
    if isinstance(value, jax.extend.core.ClosedJaxpr):
        yield value.jaxpr
    elif isinstance(value, jax.extend.core.Jaxpr):
        yield value
    elif isinstance(value, tuple | list):
        for v in value:
            yield from _sub_jaxprs(v)


def matmul_ops(jaxpr) -> list[tuple[str, str, str, int]]:
    """Every dot_general / conv_general_dilated of a jaxpr and its sub-jaxprs, as
    (primitive, lhs dtype, rhs dtype, FLOPs = 2 x output size x multiply-adds per output)."""
    ops = []

    def walk(j):
        for e in j.eqns:
            name = e.primitive.name
            if name in ("dot_general", "conv_general_dilated"):
                lhs, rhs, out = e.invars[0].aval, e.invars[1].aval, e.outvars[0].aval
                if name == "dot_general":
                    (contract, _), _ = e.params["dimension_numbers"]
                    macs = int(np.prod([lhs.shape[i] for i in contract]))
                else:  # kernel size x input features per group
                    cout = rhs.shape[e.params["dimension_numbers"].rhs_spec[0]]
                    macs = rhs.size // cout
                ops.append((name, str(lhs.dtype), str(rhs.dtype), 2 * out.size * macs))
            for value in e.params.values():
                for sub in _sub_jaxprs(value):
                    walk(sub)

    walk(jaxpr.jaxpr)
    return ops


@pytest.mark.parametrize(
    "name,overrides",
    [
        ("regressor_finegrid", {}),
        ("regressor_finegrid", {"dwconv": "xla"}),  # the GPU form of the depthwise conv
        ("regressor_point", {}),
        ("graph", {}),
    ],
)
def test_bf16_train_step_computes_in_bfloat16(name, overrides):
    """The jaxpr of one bf16 update step (forward and backward): every Linear layer's products
    (forward, input and kernel gradients) have bfloat16 operands, and the products with a
    float32 operand left (documented in the models: the soft-argmax coordinates, GRN's folded
    bias, the depthwise kernel gradient's diagonal sums, the output layer's float32 gradient)
    are under 5 % of the FLOPs. Before the compute dtype reached the layers (the step cast
    parameters and input to bfloat16, nnx.Linear promoted them back): 100 % float32."""
    _, model, state, step, batch = bf16_train_setup(name, jnp.bfloat16, **overrides)
    ops = matmul_ops(jax.make_jaxpr(step)(state, batch))
    n_linear = sum(isinstance(m, nnx.Linear) for _, m in nnx.iter_graph(model))
    bf16 = [op for op in ops if op[1] == op[2] == "bfloat16"]
    f32_flops = sum(op[3] for op in ops if "float32" in op[1:3])
    total = sum(op[3] for op in ops)
    assert len(bf16) >= 2 * n_linear, (len(bf16), n_linear)
    assert f32_flops < 0.05 * total, (f32_flops / total, [op for op in ops if "float32" in op])


@pytest.mark.parametrize("name", ["regressor_point", "graph"])
def test_bf16_step_keeps_float32_state_and_follows_the_float32_step(name):
    """Same initial parameters as the float32 build (a bf16 checkpoint loads into the float32
    model); after one bf16 step, parameters, EMA and optimiser state are float32 and the loss
    is float32 and close to the float32 step's on the same batch."""
    _, _, state32, step32, batch = bf16_train_setup(name, jnp.float32)
    _, _, state16, step16, _ = bf16_train_setup(name, jnp.bfloat16)
    assert jax.tree.structure(state16["params"]) == jax.tree.structure(state32["params"])
    for a, b in zip(jax.tree.leaves(state16["params"]), jax.tree.leaves(state32["params"]),
                    strict=True):  # fmt: skip
        assert a.dtype == b.dtype == jnp.float32
        np.testing.assert_array_equal(a, b)
    new32, out32 = fast_jit(step32)(state32, batch)
    new16, out16 = fast_jit(step16)(state16, batch)
    assert bool(out16["finite"]) and out16["loss"].dtype == jnp.float32
    for part in ("params", "ema", "opt_state"):
        assert jax.tree.structure(new16[part]) == jax.tree.structure(new32[part]), part
        for leaf in jax.tree.leaves(new16[part]):
            assert leaf.dtype in (jnp.float32, jnp.int32), (part, leaf.dtype)
    np.testing.assert_allclose(float(out16["loss"]), float(out32["loss"]), rtol=0.01)
    np.testing.assert_allclose(float(out16["grad_norm"]), float(out32["grad_norm"]), rtol=0.05)
    # the bf16-trained parameters evaluate in the float32 model (evaluation, export)
    _, _, apply32 = smoke_apply(name)
    y = jax.eval_shape(lambda p, x: apply32(p, x, False, None), new16["params"], batch["x"])
    assert y.dtype == jnp.float32


def test_build_model_compute_dtype_is_checked():
    with pytest.raises(ValueError, match="float32 or bfloat16"):
        build_model(model_config("convnext", "smoke"), rngs=nnx.Rngs(0), dtype=jnp.float16)
