"""A vertex-aware model (model.vertex_input): the measured positron vertex (xyzVTX) as one more
fusion token, end to end: train on slanted-target toy data, evaluate, export to ONNX with the
second input `vertex`, real-data inference, the C++ consumer."""

import re
import subprocess
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import onnxruntime as ort
import pytest
import uproot
from flax import nnx
from run_config import isolated_config
from tool_loader import load_tool

from xecjax.config import load_config
from xecjax.geometry import N_SENSORS
from xecjax.models import build_model, count_params, make_apply
from xecjax.simulate import SimConfig, write_toy_files

ROOT = Path(__file__).resolve().parents[1]
SMOKE = f"{ROOT / 'configs' / 'convnext.py'}:smoke"


def test_the_vertex_token_is_an_input_of_the_angle():
    cfg = load_config(SMOKE).model
    cfg.vertex_input = True
    params, apply_fn = make_apply(build_model(cfg, rngs=nnx.Rngs(0)))
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, N_SENSORS, 2)), jnp.float32)
    v = jnp.asarray([[0.0, 0.0, 0.0], [1.0, -1.0, 4.0]])
    a = np.asarray(apply_fn(params, x, vertex=v))
    b = np.asarray(apply_fn(params, x, vertex=v.at[1].set(v[1] * 2)))
    assert not np.allclose(a[1], b[1])  # the vertex moves the angle ...
    np.testing.assert_allclose(a[0], b[0], rtol=1e-6)  # ... of its own event only
    with pytest.raises(ValueError, match="needs vertex"):
        apply_fn(params, x)
    with pytest.raises(ValueError, match=r"vertex must be \[2, 3\]"):
        apply_fn(params, x, vertex=v[:1])
    # the angle-only model is unchanged but for the token's embedding and position
    cfg.vertex_input = False
    p_blind, apply_blind = make_apply(build_model(cfg, rngs=nnx.Rngs(0)))
    d = cfg.d_model
    assert count_params(params) - count_params(p_blind) == (3 * d + d) + (d * d + d) + d + (
        cfg.head_hidden * d  # the head reads one token more
    )
    with pytest.raises(ValueError, match="no vertex input"):
        apply_blind(p_blind, x, vertex=v)
    graph = load_config(f"{ROOT / 'configs' / 'graph.py'}:smoke").model
    graph.vertex_input = True
    with pytest.raises(ValueError, match="regressor option"):
        build_model(graph, rngs=nnx.Rngs(0))


@pytest.fixture(scope="module")
def vx(tmp_path_factory):
    """configs/convnext.py:smoke with model.vertex_input on slanted-target toy data: trained,
    evaluated on val and exported; a real-data toy file with its xyzVTX."""
    from xecjax.evaluate import evaluate_run
    from xecjax.export import export_run
    from xecjax.train import train_and_evaluate

    base = tmp_path_factory.mktemp("vertex")
    config = isolated_config(SMOKE, base)
    config.model.vertex_input = True
    config.data.toy_vertex = "slanted"
    work = base / "vx"
    train_and_evaluate(config, work)
    summary = evaluate_run(work, split="val", log_mlflow=False, n_saliency=8, n_worst=1)
    model = export_run(work, base / "vx.onnx", verbose=False)
    real = write_toy_files(base / "real", 24, seed=5, cfg=SimConfig(vertex="slanted"),
                           real_data=True)[0]  # fmt: skip
    return {"base": base, "work": work, "summary": summary, "model": model, "real": real}


def _real_inputs(model, real) -> tuple[np.ndarray, np.ndarray]:
    """(normalised input, xyzVTX) of a real-data file, by the normaliser in the model."""
    from xecjax.export import normaliser_of, read_metadata

    norm = normaliser_of(read_metadata(model))
    a = uproot.open(real)["tree"].arrays([*norm.branches, "xyzVTX"], library="np")
    x = np.asarray(norm(*(a[b] for b in norm.branches)), np.float32)
    return x, np.asarray(a["xyzVTX"], np.float32)


def test_a_vertex_run_trains_evaluates_and_exports(vx):
    assert np.isfinite(vx["summary"]["metrics"]["model"]["psi_68"])
    out = vx["work"] / "evaluation_best"
    tree = uproot.open(out / "validation_results_vx.root")["val_tree"].arrays(library="np")
    assert np.ptp(tree["z_vtx"]) > 1.0  # slanted target: the vertices differ
    session = ort.InferenceSession(str(vx["model"]), providers=["CPUExecutionProvider"])
    assert {i.name: i.shape for i in session.get_inputs()} == {
        "input": ["batch_size", N_SENSORS, 2], "vertex": ["batch_size", 3]
    }  # fmt: skip
    x, vtx = _real_inputs(vx["model"], vx["real"])
    with_vtx = session.run(None, {"input": x, "vertex": vtx})[0]
    moved = session.run(None, {"input": x, "vertex": vtx + np.float32(3.0)})[0]
    assert np.abs(with_vtx - moved).max() > 1e-4  # the exported graph reads the vertex


def test_real_data_inference_feeds_the_files_vertex(vx, capsys):
    infer = load_tool("infer_real")
    out = vx["base"] / "inf.root"
    assert infer.main(["--onnx", str(vx["model"]), "--input", str(vx["real"]),
                       "--output", str(out)]) == 0  # fmt: skip
    got = uproot.open(out)["val_tree"].arrays(["pred_theta", "pred_phi"], library="np")
    session = ort.InferenceSession(str(vx["model"]), providers=["CPUExecutionProvider"])
    x, vtx = _real_inputs(vx["model"], vx["real"])
    want = session.run(None, {"input": x, "vertex": vtx})[0]
    np.testing.assert_allclose(np.stack([got["pred_theta"], got["pred_phi"]], 1), want, rtol=1e-5)
    # a file without xyzVTX: refused by name, nothing written (a zero vertex would be wrong)
    arrays = uproot.open(vx["real"])["tree"].arrays(["run", "event", "npho", "relative_time",
                                                     "time"], library="np")  # fmt: skip
    bare = vx["base"] / "no_vertex.root"
    with uproot.recreate(bare) as f:
        f.mktree("tree", {k: (v.dtype, v.shape[1:]) for k, v in arrays.items()})
        f["tree"].extend(arrays)
    bad = vx["base"] / "bad.root"
    capsys.readouterr()
    assert infer.main(["--onnx", str(vx["model"]), "--input", str(bare), "--output", str(bad)]) == 1
    assert re.search(r"no_vertex\.root.*no branch 'xyzVTX'", capsys.readouterr().err)
    assert not bad.exists()


def test_the_cpp_consumer_reads_the_vertex_file(vx, tmp_path):
    from test_export import _onnxruntime_root

    build = tmp_path / "build"
    subprocess.run(["cmake", "-S", ROOT / "macro", "-B", build,
                    f"-DONNXRUNTIME_ROOT={_onnxruntime_root()}"], check=True,
                   capture_output=True)  # fmt: skip
    subprocess.run(["cmake", "--build", build], check=True, capture_output=True)
    x, vtx = _real_inputs(vx["model"], vx["real"])
    x.astype("<f4").tofile(tmp_path / "events.bin")
    np.savetxt(tmp_path / "vertex.txt", vtx)
    exe, model = build / "xec_onnx_infer", vx["model"]
    res = subprocess.run([exe, model, tmp_path / "events.bin", "--vertex", tmp_path / "vertex.txt",
                          "--batch", "5"], check=True, capture_output=True, text=True)  # fmt: skip
    got = np.loadtxt(res.stdout.splitlines(), comments="#")
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    want = session.run(None, {"input": x, "vertex": vtx})[0]
    np.testing.assert_allclose(got[:, 1:], want, rtol=1e-5, atol=1e-5)
    missing = subprocess.run([exe, model, tmp_path / "events.bin"], capture_output=True, text=True)
    assert missing.returncode == 1 and "pass --vertex" in missing.stderr
    np.savetxt(tmp_path / "short.txt", vtx[:3])
    short = subprocess.run([exe, model, tmp_path / "events.bin", "--vertex",
                            tmp_path / "short.txt"], capture_output=True, text=True)  # fmt: skip
    assert short.returncode == 1 and "3 vertices for 24 events" in short.stderr
