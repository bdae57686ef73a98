"""Real-data inference (tools/infer_real.py), plots (tools/plot_real.py) and the macro contract.

A small model (light-weighted mean sensor position -> angles) is exported once with
xecjax.export; a `--real-data` toy file, named like a PrepareRealData output, is the input.
"""

import json
import re
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import uproot
from tool_loader import load_tool

from xecjax.normalise import Normaliser
from xecjax.rootio import write_tree
from xecjax.simulate import BRANCH_DTYPES, REAL_DATA_BRANCHES, write_toy_files

ROOT = Path(__file__).resolve().parents[1]
N_EVENTS = 40
VAL_TREE = {"run_id": np.int32, "event_id": np.int32, **{b: np.float32 for b in (
    "pred_theta", "pred_phi", "true_theta", "true_phi", "opening_angle", "energy_truth",
    "x_truth", "y_truth", "z_truth", "x_vtx", "y_vtx", "z_vtx")}}  # fmt: skip


infer_real = load_tool("infer_real")
plot_real = load_tool("plot_real")


def linear_apply(params, x, train=False, rng=None):
    """A small real model: light-weighted mean sensor direction -> angles (degrees)."""
    import jax.numpy as jnp

    from xecjax.geometry import POSITIONS, vec_to_angles

    w = jnp.maximum(x[..., 0], 0.0) * params["gain"]  # npho feature, sentinels (-1) -> 0
    v = jnp.einsum("bs,sk->bk", w, jnp.asarray(POSITIONS, jnp.float32)) + params["bias"]
    return vec_to_angles(v)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A small model exported by xecjax.export (normalised input): the plumbing, not the physics
    (tests/test_export.py exports a trained regressor)."""
    import jax.numpy as jnp

    from xecjax.export import export_model

    params = {"gain": jnp.float32(1.0), "bias": jnp.array([-1.0, 0.0, 0.0], jnp.float32)}
    path = tmp_path_factory.mktemp("model") / "light_centre.onnx"
    export_model(linear_apply, params, Normaliser(), {"name": "light_centre"}, path,
                 check=False, verbose=False)  # fmt: skip
    return path


@pytest.fixture(scope="module")
def real_file(tmp_path_factory):
    d = tmp_path_factory.mktemp("real")
    (path,) = write_toy_files(d, N_EVENTS, seed=5, real_data=True)
    return path.rename(d / "DataGammaAngle_430000-430123.root")


def run(argv, capsys):
    rc = infer_real.main([*argv, "--no-progress"])
    return rc, capsys.readouterr()


def test_macro_branches_are_the_real_data_contract():
    text = (ROOT / "macro" / "PrepareRealData.C").read_text()
    declared = re.findall(r'->Branch\("(\w+)",\s*&?\w+,\s*(?:Form\()?"([^"]+)"', text)
    names = [n for n, _ in declared]
    assert names == list(REAL_DATA_BRANCHES)
    letters = {"I": np.int32, "F": np.float32, "S": np.int16}
    for name, leaf in declared:
        m = re.fullmatch(rf"{name}(?:\[(\d+|%d)\])?/([IFS])", leaf)
        assert m, (name, leaf)
        assert BRANCH_DTYPES[name] == letters[m.group(2)], name
    # everything infer_real reads (either Normaliser preset + reconstructed branches) is declared
    read = {
        *infer_real.RECO_SHAPES,
        *Normaliser().branches,
        *Normaliser.preset("relative_npho").branches,
    }
    assert read <= set(names)


def test_writes_val_tree_with_reco_as_reference(model, real_file, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc, out = run(["--onnx", str(model), "--input", str(real_file), "--chunksize", "16",
                   "--batch-size", "7", "--threads", "1"], capsys)  # fmt: skip
    assert rc == 0, out.err
    assert "events/s" in out.out
    path = tmp_path / "inference_results_Run430000-430123.root"
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]
    with uproot.open(path) as f:
        t = f["val_tree"]
        assert list(t.keys()) == list(VAL_TREE)
        got = t.arrays(library="np")
    for name, dtype in VAL_TREE.items():
        assert got[name].dtype == dtype and got[name].shape == (N_EVENTS,), name
    with uproot.open(real_file) as f:
        src = f["tree"].arrays(library="np")
    np.testing.assert_array_equal(got["event_id"], src["event"])
    np.testing.assert_array_equal(got["true_theta"], src["emiAng"][:, 0])
    np.testing.assert_array_equal(got["true_phi"], src["emiAng"][:, 1])
    np.testing.assert_array_equal(got["energy_truth"], src["energyReco"])
    np.testing.assert_array_equal(got["z_truth"], src["xyzRecoFI"][:, 2])
    np.testing.assert_array_equal(got["x_vtx"], src["xyzVTX"][:, 0])
    # predictions = the model on the Normaliser's features of npho and relative_time
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    x = Normaliser()(src["npho"], src["relative_time"])
    want = session.run(["output"], {"input": x})[0]
    np.testing.assert_allclose(got["pred_theta"], want[:, 0], atol=1e-4)
    np.testing.assert_allclose(got["pred_phi"], want[:, 1], atol=1e-4)
    assert np.all(np.isfinite(got["opening_angle"])) and np.all(got["opening_angle"] >= 0)

    rc = plot_real.main(["--input", str(path), "--output-dir", str(tmp_path / "plots")])
    assert rc == 0
    for name in ("scatter.pdf", "one_minus_cos.pdf", "resolution_profile.pdf"):
        assert (tmp_path / "plots" / name).stat().st_size > 1000
    summary = json.loads((tmp_path / "plots" / "summary.json").read_text())
    assert summary["n_events"] == N_EVENTS and summary["psi_68"] > 0


def test_missing_reco_branches_are_zero_filled(model, real_file, tmp_path, capsys):
    with uproot.open(real_file) as f:
        src = f["tree"].arrays(["npho", "relative_time", "run"], library="np")
    write_tree(tmp_path / "bare.root", src)
    with pytest.warns(UserWarning, match=r"emiAng.*missing.*filled with zeros") as record:
        rc, out = run(["--onnx", str(model), "--input", str(tmp_path / "bare.root"),
                       "--output", str(tmp_path / "out.root")], capsys)  # fmt: skip
    assert rc == 0, out.err
    assert sum("filled with zeros" in str(w.message) for w in record) == 1  # reported once
    with uproot.open(tmp_path / "out.root") as f:
        got = f["val_tree"].arrays(library="np")
    for name in ("true_theta", "energy_truth", "x_truth", "z_vtx", "opening_angle"):
        assert np.all(got[name] == 0), name
    np.testing.assert_array_equal(got["event_id"], np.arange(N_EVENTS))  # entry numbers
    assert np.all(np.isfinite(got["pred_theta"]))


def test_norm_override_warns_and_changes_the_input(model, real_file, tmp_path, capsys):
    with pytest.warns(UserWarning, match="npho_scale=500.0 differs from the model's 1000.0"):
        rc, out = run(["--onnx", str(model), "--input", str(real_file), "--output",
                       str(tmp_path / "o.root"), "--norm", "npho_scale=500"], capsys)  # fmt: skip
    assert rc == 0, out.err
    rc, out = run(["--onnx", str(model), "--input", str(real_file), "--output",
                   str(tmp_path / "p.root"), "--norm", "bogus=1"], capsys)  # fmt: skip
    assert rc == 1 and "unknown parameter" in out.err and not (tmp_path / "p.root").exists()


def test_output_name_from_run_ranges():
    name = infer_real.default_output(["/d/DataGammaAngle_430100-430200.root",
                                      "/d/DataGammaAngle_430000-430099.root"])  # fmt: skip
    assert name == "inference_results_Run430000-430200.root"
    assert infer_real.default_output(["/d/real.root"]) == "inference_results_real.root"


def bad_model(path: Path, batch="N", shape=(10,), dtype=onnx.TensorProto.FLOAT, width=None) -> Path:
    """A valid ONNX model: input (batch, *shape) of dtype; output the input (width None) or a
    mean over one axis, (batch, width)."""
    h = onnx.helper
    x = h.make_tensor_value_info("input", dtype, [batch, *shape])
    if width is None:
        y = h.make_tensor_value_info("output", dtype, [batch, *shape])
        node = h.make_node("Identity", ["input"], ["output"])
    else:
        y = h.make_tensor_value_info("output", dtype, [batch, width])
        axis = 1 if width == shape[-1] else 2  # mean over sensors (N, 2) or channels (N, 4760)
        node = h.make_node("ReduceMean", ["input"], ["output"], axes=[axis], keepdims=0)
    graph = h.make_graph([node], "g", [x], [y])
    onnx.save(h.make_model(graph, opset_imports=[h.make_opsetid("", 13)]), path)
    return path


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing_model", "does not exist"),
        ("not_onnx", "not a loadable ONNX model"),
        ("wrong_input_shape", "expected one input (N, 4760, 2)"),
        ("fixed_batch", "batch dimension fixed at 4"),
        ("float64_input", "input type tensor(double)"),
        ("wide_output", "output shape ['N', 4760]"),
        ("missing_input", "does not exist"),
        ("no_sensor_branches", "has no branch 'npho'"),
        ("truncated_input", "cut_1-2.root"),  # a copy cut short (transfer or disk full)
    ],
)
def test_bad_inputs_give_clear_errors_and_no_output(case, message, model, real_file, tmp_path,
                                                    capsys):  # fmt: skip
    onnx_path, input_path = model, real_file
    if case == "missing_model":
        onnx_path = tmp_path / "nothing.onnx"
    elif case == "not_onnx":
        onnx_path = tmp_path / "text.onnx"
        onnx_path.write_text("this is not a model\n")
    elif case == "wrong_input_shape":
        onnx_path = bad_model(tmp_path / "bad.onnx")
    elif case == "fixed_batch":
        onnx_path = bad_model(tmp_path / "bad.onnx", batch=4, shape=(4760, 2), width=2)
    elif case == "float64_input":
        onnx_path = bad_model(tmp_path / "bad.onnx", shape=(4760, 2), width=2,
                              dtype=onnx.TensorProto.DOUBLE)  # fmt: skip
    elif case == "wide_output":
        onnx_path = bad_model(tmp_path / "bad.onnx", shape=(4760, 2), width=4760)
    elif case == "missing_input":
        input_path = tmp_path / "DataGammaAngle_1-2.root"
    elif case == "no_sensor_branches":
        input_path = tmp_path / "reco_only.root"
        write_tree(input_path, {"run": np.zeros(3, np.int32), "emiAng": np.zeros((3, 2), "f4")})
    elif case == "truncated_input":
        input_path = tmp_path / "cut_1-2.root"
        data = Path(real_file).read_bytes()
        input_path.write_bytes(data[: len(data) // 2])
    before = set(tmp_path.iterdir())
    rc, out = run(["--onnx", str(onnx_path), "--input", str(input_path), "--output",
                   str(tmp_path / "out.root")], capsys)  # fmt: skip
    assert rc == 1
    assert message in out.err and "infer_real:" in out.err
    assert set(tmp_path.iterdir()) == before  # nothing written, no temporary left


def test_cuda_request_falls_back_to_cpu_with_a_warning(model):
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    with pytest.warns(UserWarning, match="running on CPU"):
        session, meta = infer_real.load_session(model, device="cuda", threads=1)
    assert session.get_providers() == ["CPUExecutionProvider"]
    assert meta["input_kind"] == "normalised"
