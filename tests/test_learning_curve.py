"""tools/learning_curve.py: two sizes of the smoke model on tiny toy sets; argument checks."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import uproot
from tool_loader import load_tool

ROOT = Path(__file__).resolve().parents[1]
CONFIG = f"{ROOT / 'configs' / 'convnext.py'}:smoke"


learning_curve = load_tool("learning_curve")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--sizes", "64,0"], "0: expected an integer >= 1"),
        (["--sizes", "-5"], "-5: expected an integer >= 1"),
        (["--sizes", "64,abc"], "'abc' is not an integer"),
        (["--sizes", "1.5e3"], "'1.5e3' is not an integer"),
        (["--sizes", "8"], "below one batch"),
        (["--sizes", "64", "--config.optim.nope=1"], "unknown key 'nope'"),
        (["--sizes", "64", "--config.nosection.lr=1"], "no section 'nosection'"),
        (["--sizes", "64", "--config.optim.lr=fast"], "expected a float"),
        (["--sizes", "64", "--config.train.seed=3"], "set by this tool (use --seeds)"),
        (["--sizes", "64", "--epochs", "0"], "expected a positive integer"),
    ],
)
def test_bad_arguments_are_clear_errors(args, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        learning_curve.main(["--config", CONFIG, "--out", str(tmp_path), *args])
    assert e.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "learning_curve.json").exists()


def test_nesting_of_the_training_sets():
    assert learning_curve.nested([3000, 10000, 30000], 1000)
    assert learning_curve.nested([64, 128, 1000], 1000)
    assert not learning_curve.nested([1000, 1001], 1000)  # 1 x 1000 vs 501 + 500


def test_learning_curve_end_to_end(tmp_path, capsys):
    out, data = tmp_path / "lc", tmp_path / "data"
    argv = ["--config", CONFIG, "--sizes", "128,64", "--epochs", "1", "--test-events", "64",
            "--val-events", "64", "--out", str(out), "--data-dir", str(data),
            "--config.data.chunk_size=64", "--saliency-events", "4", "--worst", "1"]  # fmt: skip
    assert learning_curve.main(argv) == 0
    result = json.loads((out / "learning_curve.json").read_text())
    assert (out / "learning_curve.pdf").stat().st_size > 0
    assert result["sizes"] == [64, 128] and result["seeds"] == [0]
    assert result["overrides"] == ["--config.data.chunk_size=64"]
    assert result["train_sets_nested"]
    assert [(p["n"], p["seed"]) for p in result["points"]] == [(64, 0), (128, 0)]
    for p in result["points"]:
        assert math.isfinite(p["psi68_deg"]) and p["psi68_deg"] > 0
        assert p["test_events"] == 64 and p["epochs"] == 1 and p["train_wall_s"] > 0
        assert p["baselines"] == result["baselines"]  # the same test events every time
    for name in ("baseline_fit", "baseline_centroid"):
        assert math.isfinite(result["baselines"][name]) and result["baselines"][name] > 0
    assert [r["n"] for r in result["summary"]] == [64, 128]
    table = capsys.readouterr().out
    assert "| 64 | 0 |" in table and "| 128 | 0 |" in table

    # test, validation and training: different simulation seeds, files and events
    seeds = {result[k]["seed"] for k in ("test", "val")} | {
        s["seed"] for s in result["train"].values()
    }
    assert len(seeds) == 3
    test_files = set(result["test"]["files"])
    train_files = {f for s in result["train"].values() for f in s["files"]}
    assert not test_files & (train_files | set(result["val"]["files"]))

    def directions(files):
        return np.concatenate([uproot.open(f)["tree"]["emiVec"].array(library="np") for f in files])

    test_dirs = directions(test_files)
    small, large = (directions(result["train"][str(n)]["files"]) for n in (64, 128))
    np.testing.assert_array_equal(small, large[:64])  # nested: the first 64 of the 128
    assert not (test_dirs[:, None, :] == large[None, :, :]).all(-1).any()
    assert not (test_dirs[:, None, :] == directions(result["val"]["files"])[None]).all(-1).any()
