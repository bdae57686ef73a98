"""Checkpoint round trip of a training state on stand-in pytrees (no model needed)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from xecjax.checkpoint import Checkpointer, read_meta, resolve_checkpoint_dir


def make_state(seed: int, step: int) -> dict:
    k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
    params = {
        "dense": {"kernel": jax.random.normal(k1, (3, 4)), "bias": jnp.zeros(4)},
        "pos_embed": jax.random.normal(k2, (1, 6, 4)),
    }
    tx = optax.adamw(optax.warmup_cosine_decay_schedule(0.0, 1e-3, 5, 50), weight_decay=0.05)
    opt_state = tx.init(params)
    grads = jax.tree.map(jnp.ones_like, params)
    for _ in range(step):
        _, opt_state = tx.update(grads, opt_state, params)
    return {
        "params": params,
        "ema": jax.tree.map(lambda a: 0.5 * a, params),
        "opt_state": opt_state,
        "step": jnp.asarray(step, jnp.int32),
        "rng": jax.random.PRNGKey(seed + 1),
    }


META = {
    "position": {"epoch": 1, "batch": 7},
    "config": {"model": {"name": "x"}},
    "normaliser": {"npho_scale": 1000.0},
}


def test_round_trip_restores_types_values_and_meta(tmp_path):
    ckpt = Checkpointer(tmp_path)
    state = make_state(0, 3)
    assert ckpt.save("last", state, META)
    ckpt.wait()
    target = jax.tree.map(jnp.zeros_like, make_state(1, 0))  # same structure, other values
    restored, meta = ckpt.restore("last", target)
    ckpt.close()
    assert meta == META
    # optax states come back as their NamedTuple types, not lists
    assert jax.tree.structure(restored) == jax.tree.structure(state)
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert isinstance(restored["opt_state"][0], optax.ScaleByAdamState)
    assert int(restored["opt_state"][-1].count) == 3  # the schedule's step count


def test_keeps_one_step_per_kind_and_skips_existing_step(tmp_path):
    ckpt = Checkpointer(tmp_path, async_save=False)
    for step in (2, 5):
        assert ckpt.save("last", make_state(0, step), META)
    assert not ckpt.save("last", make_state(0, 5), META)  # already there
    assert ckpt.save("best", make_state(0, 2), META)
    ckpt.close()
    assert sorted(p.name for p in (tmp_path / "checkpoints" / "last").iterdir()) == ["5"]
    assert sorted(p.name for p in (tmp_path / "checkpoints" / "best").iterdir()) == ["2"]
    for path in (tmp_path, tmp_path / "checkpoints", tmp_path / "checkpoints" / "best"):
        assert resolve_checkpoint_dir(path, "best") == tmp_path.resolve() / "checkpoints" / "best"
    step, meta = read_meta(tmp_path, "last")
    assert step == 5 and meta["position"] == {"epoch": 1, "batch": 7}


def test_unfinished_write_does_not_hide_the_previous_checkpoint(tmp_path):
    ckpt = Checkpointer(tmp_path, async_save=False)
    ckpt.save("last", make_state(0, 2), META)
    ckpt.close()
    # what an interrupted Orbax write leaves behind: a temporary directory, never renamed
    junk = tmp_path / "checkpoints" / "last" / "9.orbax-checkpoint-tmp-123"
    (junk / "params").mkdir(parents=True)
    (junk / "params" / "garbage").write_bytes(b"\0" * 10)
    ckpt = Checkpointer(tmp_path, async_save=False)
    assert ckpt.latest_step("last") == 2
    restored, _ = ckpt.restore("last", make_state(3, 0))
    ckpt.close()
    assert int(restored["step"]) == 2


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoints/last"):
        read_meta(tmp_path, "last")
    ckpt = Checkpointer(tmp_path, async_save=False)
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        ckpt.restore("best", make_state(0, 0))
    ckpt.close()
