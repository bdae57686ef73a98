"""Native CPU kernels for XLA:CPU (XLA FFI), built from source on first use.

XLA:CPU runs the ConvNeXt blocks' depthwise 7x7 convolution as shifted passes over memory and its
kernel gradient as a banded matmul over materialised row shifts; `depthwise.cc` does both as
loops that accumulate in registers. Measured on the 2-core development machine, batch 32,
float32 (each A/B in one process): on a 32 x 92 x 43 x 32 map the convolution takes 5.7 ms
instead of 10.7 and the kernel gradient 10.4 ms instead of 62; on 32 x 46 x 21 x 64, 3.0 instead
of 6.4 and 4.1 instead of 40.5. The pure-JAX forms in xecjax.models.layers stay the reference:
tests compare the two, and they run wherever the native kernels do not (GPUs, bfloat16, no C++
compiler, `XECJAX_NATIVE=0`).

The library is compiled once per source, compiler, jaxlib and CPU (`-march=native` code must
not run on another CPU type, e.g. a home folder shared by x86 and ARM nodes) into
`$XECJAX_NATIVE_CACHE` (default `~/.cache/xecjax/native`) with `$CXX` (default `c++`), about
5 s, written to a temporary name and renamed. Without a compiler, or if the build fails, a
warning names the command and its error and the pure-JAX forms are used;
`XECJAX_REQUIRE_NATIVE=1` (CI) makes that an error instead.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shlex
import stat
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path

import jax
import jaxlib

SOURCE = Path(__file__).with_name("depthwise.cc")
_TARGETS = {
    "xecjax_depthwise_forward": "XecjaxDepthwiseForward",
    "xecjax_depthwise_kernel_grad": "XecjaxDepthwiseKernelGrad",
}
_ARCH_FLAGS = (["-march=native"], ["-mcpu=native"], [])  # x86 / ARM / the compiler's default
_BASE_FLAGS = ["-O3", "-std=c++17", "-fPIC", "-shared"]

_lock = threading.Lock()
_state: dict[str, object] = {}


class NativeBuildError(RuntimeError):
    """The native library could not be built or loaded (the message names the command)."""


def _cpu_id() -> str:
    """What -march=native depends on: the machine and, on Linux, the CPU model and flags."""
    ident = [platform.machine(), platform.processor()]
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.split(":")[0].strip() in ("model name", "flags", "Features", "CPU part"):
                ident.append(line)
                if len(ident) > 6:
                    break
    except OSError:
        pass
    return "\n".join(ident)


def _compiler_version(cxx: list[str]) -> str:
    try:
        out = subprocess.run([*cxx, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise NativeBuildError(f"C++ compiler {shlex.join(cxx)!r} not usable: {err}") from err
    if out.returncode != 0:
        raise NativeBuildError(f"{shlex.join(cxx)} --version failed: {out.stderr.strip()}")
    return out.stdout


def _check_private(*paths: Path) -> None:
    """Refuse a cache that another user could have written: each path must belong to this
    user and not be writable by group or others (a planted library would run in-process)."""
    for path in paths:
        st = path.stat()
        if st.st_uid != os.getuid():
            raise NativeBuildError(f"{path} belongs to uid {st.st_uid}, not to this user")
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise NativeBuildError(
                f"{path} is writable by group or others (mode {stat.filemode(st.st_mode)}): "
                f"chmod go-w it, or set XECJAX_NATIVE_CACHE to a private folder"
            )


def build_library(cache_dir: str | os.PathLike | None = None, cxx: str | None = None) -> Path:
    """Compile depthwise.cc (once per source, compiler, jaxlib and CPU); the library's path."""
    compiler = shlex.split(cxx or os.environ.get("CXX") or "c++")
    root = Path(
        cache_dir
        or os.environ.get("XECJAX_NATIVE_CACHE")
        or Path.home() / ".cache" / "xecjax" / "native"
    )
    source = SOURCE.read_bytes()
    key = hashlib.sha256(
        b"\0".join(
            [
                source,
                _compiler_version(compiler).encode(),
                jaxlib.__version__.encode(),
                _cpu_id().encode(),
                " ".join(_BASE_FLAGS).encode(),
            ]
        )
    ).hexdigest()[:16]
    lib = root / key / "libxecjax_native.so"
    if lib.exists():
        # loading it runs its code in this process; the key folder's owner and mode also
        # protect it when the cache root is shared (a replaced folder has another owner)
        _check_private(lib.parent, lib)
        return lib
    root.mkdir(parents=True, exist_ok=True)
    lib.parent.mkdir(mode=0o700, exist_ok=True)
    _check_private(lib.parent)
    errors = []
    for arch in _ARCH_FLAGS:
        fd, tmp = tempfile.mkstemp(suffix=".so.tmp", dir=lib.parent)
        os.close(fd)
        cmd = [*compiler, *_BASE_FLAGS, *arch, f"-I{jax.ffi.include_dir()}", str(SOURCE), "-o", tmp]
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        except (OSError, subprocess.TimeoutExpired) as err:
            os.unlink(tmp)
            raise NativeBuildError(f"{shlex.join(cmd)}: {err}") from err
        if out.returncode == 0:
            os.replace(tmp, lib)  # complete or absent: never a half-written library
            return lib
        os.unlink(tmp)
        errors.append(f"{shlex.join(cmd)}:\n{out.stderr.strip()[-2000:]}")
    raise NativeBuildError("building the native kernels failed:\n" + "\n".join(errors))


def _load() -> bool:
    if os.environ.get("XECJAX_NATIVE", "1") == "0":
        return False
    try:
        lib = ctypes.cdll.LoadLibrary(str(build_library()))
        for target, symbol in _TARGETS.items():
            jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, symbol)), "cpu")
    except (NativeBuildError, OSError, AttributeError) as err:
        if os.environ.get("XECJAX_REQUIRE_NATIVE") == "1":
            raise NativeBuildError(f"XECJAX_REQUIRE_NATIVE=1: {err}") from err
        warnings.warn(
            f"xecjax native CPU kernels unavailable, using the pure-JAX forms: {err}",
            RuntimeWarning,
            stacklevel=3,
        )
        return False
    _state["library"] = lib
    return True


def available() -> bool:
    """True if the native kernels are built, loaded and registered (builds on the first call)."""
    with _lock:
        if "ok" not in _state:
            _state["ok"] = _load()
        return bool(_state["ok"])


def depthwise_forward(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """'same' depthwise correlation, x [B, H, W, C] float32, kernel [k, k, C] (k odd)."""
    out = jax.ShapeDtypeStruct(x.shape, x.dtype)
    return jax.ffi.ffi_call("xecjax_depthwise_forward", out, vmap_method="sequential")(x, kernel)


def depthwise_kernel_grad(x: jax.Array, g: jax.Array, k: int) -> jax.Array:
    """dL/dkernel [k, k, C] of depthwise_forward(x, kernel) for the output gradient g."""
    out = jax.ShapeDtypeStruct((k, k, x.shape[-1]), x.dtype)
    return jax.ffi.ffi_call("xecjax_depthwise_kernel_grad", out, vmap_method="sequential")(x, g)
