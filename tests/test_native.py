"""xecjax.native: the C++ depthwise kernels against the pure-JAX forms they replace on CPU.

The library is built with the machine's C++ compiler. Without one these tests skip, except
where XECJAX_REQUIRE_NATIVE=1 (.ci/run) makes a missing or failing build an error.
"""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from xecjax import native
from xecjax.models import layers

pytestmark = pytest.mark.skipif(
    os.environ.get("XECJAX_REQUIRE_NATIVE") != "1" and not native.available(),
    reason="native CPU kernels not built (no C++ compiler?)",
)

# (shape [B, H, W, C], k): the reference maps, a tiny face, channel counts with and without a
# compiled-in specialisation, maps narrower than the kernel
CASES = [
    ((2, 92, 43, 32), 7),
    ((3, 46, 21, 64), 7),
    ((4, 23, 5, 32), 7),
    ((2, 10, 7, 8), 7),
    ((2, 9, 6, 5), 7),
    ((1, 3, 2, 4), 7),
    ((2, 8, 9, 12), 3),
]


def _inputs(shape, k):
    kx, kg, kw = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, shape)
    return x, jax.random.normal(kg, shape), jax.random.normal(kw, (k, k, shape[-1]))


def test_native_kernels_are_built_and_registered():
    assert native.available()
    assert native.build_library().is_file()


@pytest.mark.parametrize("shape,k", CASES)
def test_native_conv_equals_the_shifted_sum(shape, k):
    x, _, w = _inputs(shape, k)
    got = jax.jit(native.depthwise_forward)(x, w)
    want = jax.jit(layers._shifted_sum)(x, w)
    # and lax.conv, independent of both
    conv = jax.lax.conv_general_dilated(
        x,
        w[:, :, None, :],
        (1, 1),
        ((k // 2, k // 2),) * 2,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=shape[-1],
        precision=jax.lax.Precision.HIGHEST,
    )
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got, conv, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape,k", CASES)
def test_native_kernel_grad_equals_the_banded_form(shape, k):
    x, g, _ = _inputs(shape, k)
    got = jax.jit(native.depthwise_kernel_grad, static_argnums=2)(x, g, k)
    want = jax.jit(layers._kernel_grad, static_argnums=2)(x, g, k)
    assert got.shape == (k, k, shape[-1])
    scale = float(jnp.abs(want).max())
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-6 * scale)


def test_native_kernel_grad_is_deterministic():
    x, g, _ = _inputs((4, 46, 21, 64), 7)
    f = jax.jit(native.depthwise_kernel_grad, static_argnums=2)
    first = np.asarray(f(x, g, 7))
    for _ in range(3):
        np.testing.assert_array_equal(np.asarray(f(x, g, 7)), first)


def test_native_kernels_under_vmap():
    x, g, w = _inputs((2, 10, 7, 8), 7)
    xs, ws = jnp.stack([x, 2 * x]), jnp.stack([w, -w])
    got = jax.vmap(native.depthwise_forward)(xs, ws)
    for i in range(2):
        np.testing.assert_allclose(got[i], layers._shifted_sum(xs[i], ws[i]), rtol=1e-5, atol=1e-5)


def test_direct_block_lowers_to_the_native_kernels_on_cpu():
    """The ConvNeXt block of the default CPU form calls both kernels (forward and backward)."""
    blk = layers.ConvNeXtBlock(
        8, drop_path=0.0, dwconv="direct", dtype=jnp.float32, rngs=nnx.Rngs(0)
    )
    graph, params = nnx.split(blk)
    x = jax.random.normal(jax.random.key(1), (2, 10, 7, 8))

    def loss(p):
        return jnp.sum(nnx.merge(graph, p)(x, train=False, rng=None) ** 2)

    hlo = jax.jit(jax.grad(loss)).lower(params).as_text()
    assert "xecjax_depthwise_forward" in hlo and "xecjax_depthwise_kernel_grad" in hlo


def test_a_missing_compiler_is_a_clear_error(tmp_path):
    with pytest.raises(native.NativeBuildError, match="no-such-c[+][+]"):
        native.build_library(cache_dir=tmp_path, cxx=str(tmp_path / "no-such-c++"))
    assert not any(tmp_path.rglob("*.so*"))  # nothing half-written left behind


def test_the_library_is_built_once_per_cache(tmp_path):
    first = native.build_library(cache_dir=tmp_path)
    mtime = first.stat().st_mtime_ns
    assert native.build_library(cache_dir=tmp_path) == first
    assert first.stat().st_mtime_ns == mtime
    assert [p.name for p in first.parent.iterdir()] == [first.name]  # no temporaries left


def test_a_cached_library_others_could_write_is_refused(tmp_path):
    """A library in a folder (or a file) writable by group or others is not loaded: it could
    have been planted and would run in this process."""
    lib = native.build_library(cache_dir=tmp_path)
    for path in (lib.parent, lib):
        mode = path.stat().st_mode
        path.chmod(mode | 0o022)
        with pytest.raises(native.NativeBuildError, match="writable by group or others"):
            native.build_library(cache_dir=tmp_path)
        path.chmod(mode)
    assert native.build_library(cache_dir=tmp_path) == lib


def test_the_kernel_gradient_checks_the_shape_of_g():
    """The C++ handler refuses a g whose shape differs from x's (an out-of-bounds read)."""
    if not native.available():
        pytest.skip("native kernels not built")
    x = jnp.ones((2, 8, 9, 4), jnp.float32)
    g = jnp.ones((2, 8, 8, 4), jnp.float32)
    with pytest.raises(Exception, match="g must have x's shape"):
        jax.block_until_ready(native.depthwise_kernel_grad(x, g, 7))


@pytest.mark.parametrize("required", [False, True])
def test_without_a_compiler_the_pure_jax_forms_run_or_ci_fails(tmp_path, required):
    """No compiler: a warning and available() False; under XECJAX_REQUIRE_NATIVE=1 an error."""
    env = {k: v for k, v in os.environ.items() if k != "XECJAX_REQUIRE_NATIVE"}
    env.update(CXX=str(tmp_path / "no-such-c++"), XECJAX_NATIVE_CACHE=str(tmp_path / "cache"))
    if required:
        env["XECJAX_REQUIRE_NATIVE"] = "1"
    code = "import xecjax.native as n; print('available', n.available())"
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    if required:
        assert done.returncode != 0
        assert "NativeBuildError: XECJAX_REQUIRE_NATIVE=1" in done.stderr
    else:
        assert done.returncode == 0, done.stderr[-2000:]
        assert "available False" in done.stdout
        assert "native CPU kernels unavailable" in done.stderr and "no-such-c++" in done.stderr
