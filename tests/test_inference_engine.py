"""The inference engine on tiny Flax models: numbers against a numpy oracle, PRNG rule, sharding.

Oracles: `testing.numpy_tiny_ensemble` (the tiny model's forward written in float64 numpy) and,
for the noisy model, the documented key rule applied by hand, one example at a time, outside the
engine: logits_n = apply(params, x_n[None], fold_in(PRNGKey(seed), id_n)).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from plexbench.errors import PlexbenchError
from plexbench.inference import ModelHandle, array_source, predict
from plexbench.inference import engine as eng
from plexbench.inference import testing as T
from plexbench.inference.handle import wrap_module_apply

N = 37  # not a multiple of any batch size used: the last batch is always padded


def tiny_handle(members=2, seed=0, counter=None):
    module = T.make_tiny_ensemble(members)
    params = T.init(module, seed)
    apply = wrap_module_apply(module)
    if counter is not None:
        def apply(p, x, k, _inner=apply):  # counts traces (= compilations)
            counter.append(1)
            return _inner(p, x, k)
    return ModelHandle("tiny", apply, params=params, identity={"tiny": members, "seed": seed}), params


def noisy_handle():
    module = T.make_tiny_noisy()
    params = T.init(module)
    return ModelHandle("noisy", wrap_module_apply(module), params=params, identity={"noisy": 1}), module, params


@pytest.fixture(scope="module")
def images():
    return T.random_images(N, seed=1)


@pytest.fixture(scope="module")
def labels():
    return np.arange(N) % 3


def run(handle, images, labels, tmp_path, **kw):
    kw.setdefault("batch_size", 8)
    source = array_source("synthetic", "test", images, labels)
    return predict(handle, "synthetic", "test", store_dir=tmp_path, source=source, verbose=False, **kw)


def test_outputs_match_numpy_oracle_in_example_order(images, labels, tmp_path):
    handle, params = tiny_handle()
    entry = run(handle, images, labels, tmp_path, batch_size=8, chunk_size=16)
    oracle = T.numpy_tiny_ensemble(jax.device_get(params), images)
    assert entry.logits.shape == (2, N, 3) and entry.logits.dtype == np.float32
    assert entry.pre_logits.shape == (2, N, 5)
    np.testing.assert_allclose(entry.logits, oracle["logits"], atol=2e-6, rtol=1e-5)
    np.testing.assert_allclose(entry.pre_logits, oracle["pre_logits"], atol=2e-6, rtol=1e-5)
    np.testing.assert_array_equal(entry.ids, np.arange(N))
    np.testing.assert_array_equal(entry.labels, labels)


def test_without_pre_logits(images, labels, tmp_path):
    handle, _ = tiny_handle()
    entry = run(handle, images, labels, tmp_path, with_pre_logits=False)
    assert entry.pre_logits is None and entry.logits.shape == (2, N, 3)


def test_rng_is_used_by_tracing():
    handle, params = tiny_handle()
    assert eng.rng_is_used(handle.apply_fn, params, T.IMAGE_SHAPE) is False
    noisy, _, nparams = noisy_handle()
    assert eng.rng_is_used(noisy.apply_fn, nparams, T.IMAGE_SHAPE) is True


def test_noisy_model_keys_fold_example_ids(images, labels, tmp_path):
    handle, module, params = noisy_handle()
    entry = run(handle, images, labels, tmp_path / "a", batch_size=8, seed=5)
    assert handle.uses_rng is True
    base = jax.random.PRNGKey(5)
    for n in (0, 13, N - 1):  # the oracle, one example at a time
        want = module.apply({"params": params}, images[n:n + 1], rng=jax.random.fold_in(base, n))["logits"]
        np.testing.assert_allclose(entry.logits[:, n], np.asarray(want)[:, 0], atol=1e-6)
    # Another batch size and chunk size: the same numbers (up to matmul rounding, see engine doc).
    other = run(handle, images, labels, tmp_path / "b", batch_size=3, seed=5, chunk_size=10)
    np.testing.assert_allclose(other.logits, entry.logits, atol=1e-6)
    # Another seed: other noise (0.1 * N(0,1) per logit, so differences are ~0.1).
    third = run(handle, images, labels, tmp_path / "c", batch_size=8, seed=6)
    assert np.abs(third.logits - entry.logits).mean() > 0.01


def test_per_example_key_convention(images):
    """A handle declaring per_example_keys gets rng = (B, 2) raw keys fold_in(key, id_b)."""
    seen = {}

    def apply(params, x, rng):
        seen["shape"] = rng.shape
        return {"logits": jax.numpy.broadcast_to(rng[:, :1].astype("float32"), (1, x.shape[0], 1)), "pre_logits": None}

    handle = ModelHandle("keys", apply, params={"w": np.zeros(1, np.float32)}, identity={"k": 1},
                         uses_rng=True, per_example_keys=True)
    engine = eng.Engine(handle, seed=3, with_pre_logits=False)
    ids = np.array([4, 9, 2, 7])
    out = next(engine.run([{"image": images[:4], "label": ids, "id": ids, "mask": np.ones(4, bool)}], 4))
    assert seen["shape"] == (4, 2)
    want = [np.asarray(jax.random.fold_in(jax.random.PRNGKey(3), i))[0] for i in ids]
    np.testing.assert_array_equal(out["logits"][0, :, 0], np.asarray(want, np.float32))


def test_bfloat16_changes_compute_but_not_storage(images, labels, tmp_path):
    handle, params = tiny_handle()
    f32 = run(handle, images, labels, tmp_path, dtype="float32")
    bf16 = run(handle, images, labels, tmp_path, dtype="bfloat16")
    assert bf16.key != f32.key and bf16.logits.dtype == np.float32
    diff = np.abs(bf16.logits - f32.logits)
    # bfloat16 has an 8-bit significand: relative error ~2^-8 per rounding, logits are O(1).
    assert 0 < diff.max() < 0.1


def test_bad_dtype_and_batch_size(images, labels, tmp_path):
    handle, _ = tiny_handle()
    with pytest.raises(PlexbenchError, match="dtype"):
        run(handle, images, labels, tmp_path, dtype="float16")
    with pytest.raises(PlexbenchError, match="batch size"):
        run(handle, images, labels, tmp_path, batch_size=0)


def test_one_step_stays_in_flight(images):
    """Step i+1 is dispatched before step i's results are fetched to the host."""
    handle, _ = tiny_handle()
    engine = eng.Engine(handle)
    events = []
    dispatch, to_host = engine._dispatch, engine._to_host
    engine._dispatch = lambda b: (events.append(("dispatch", int(b["id"][0]))), dispatch(b))[1]
    engine._to_host = lambda b, o: (events.append(("fetch", int(b["id"][0]))), to_host(b, o))[1]
    batches = [{"image": images[i:i + 4], "label": np.zeros(4), "id": np.arange(i, i + 4)} for i in (0, 4, 8)]
    list(engine.run(batches, 4))
    assert events == [("dispatch", 0), ("dispatch", 4), ("fetch", 0), ("dispatch", 8), ("fetch", 4), ("fetch", 8)]


def test_pad_batch_masks_padding_rows():
    batch = {"image": np.ones((3, 2, 2, 3), np.float32), "label": np.array([1, 2, 0]), "id": np.array([5, 6, 7])}
    out = eng.pad_batch(batch, 5)
    np.testing.assert_array_equal(out["mask"], [True, True, True, False, False])
    assert out["image"].shape == (5, 2, 2, 3) and out["id"].shape == (5,)
    with pytest.raises(PlexbenchError):
        eng.pad_batch(batch, 2)


@pytest.mark.parametrize("n, multiple, want", [(1, 4, 4), (4, 4, 4), (5, 4, 8), (30, 1, 30)])
def test_round_up(n, multiple, want):
    assert eng.round_up(n, multiple) == want


# ----------------------------------------------------------------------------- several devices

SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    import jax
    from plexbench.inference import ModelHandle, array_source, predict
    from plexbench.inference import testing as T
    from plexbench.inference.handle import wrap_module_apply
    cfg = json.loads(sys.argv[1])
    if cfg.get("coordinator"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(cfg["coordinator"], num_processes=2, process_id=cfg["pid"],
                                   initialization_timeout=30)
    out = {"devices": len(jax.devices()), "processes": jax.process_count()}
    images = T.random_images(37, seed=1)
    labels = np.arange(37) % 3
    source = array_source("synthetic", "test", images, labels)
    for kind in ("tiny", "noisy"):
        module = T.make_tiny_ensemble(2) if kind == "tiny" else T.make_tiny_noisy()
        handle = ModelHandle(kind, wrap_module_apply(module), params=T.init(module), identity={kind: 1})
        entry = predict(handle, "synthetic", "test", store_dir=cfg["store"] + "/" + kind, source=source,
                        batch_size=cfg["batch"], seed=5, chunk_size=16, verbose=False)
        out[kind] = entry.logits.tolist()
        out[kind + "_ids"] = entry.ids.tolist()
    if jax.process_index() == 0:
        json.dump(out, open(cfg["out"], "w"))
""")


def _env(devices: int) -> dict:
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["PLEXBENCH_QUIET"] = "1"
    env["JAX_PLATFORMS"] = "cpu"
    return env


def _single_device_reference(tmp_path, batch):
    out = {}
    source = array_source("synthetic", "test", T.random_images(37, seed=1), np.arange(37) % 3)
    for kind in ("tiny", "noisy"):
        module = T.make_tiny_ensemble(2) if kind == "tiny" else T.make_tiny_noisy()
        handle = ModelHandle(kind, wrap_module_apply(module), params=T.init(module), identity={kind: 1})
        entry = predict(handle, "synthetic", "test", store_dir=tmp_path / "ref" / kind, source=source,
                        batch_size=batch, seed=5, chunk_size=16, verbose=False)
        out[kind] = entry.logits
    return out


def test_four_devices_match_one_device(tmp_path):
    """4 forced CPU devices, global batch 32 (8 per device) vs 1 device at batch 8.

    Each device then runs the same shapes as the single-device run, so the per-row arithmetic is
    the same; the test still allows 1e-6 because XLA may pick other kernels for a sharded program
    (float32 reduction order; see the engine docstring).
    """
    assert len(jax.devices()) == 1
    cfg = {"store": str(tmp_path / "store"), "out": str(tmp_path / "out.json"), "batch": 32}
    subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(cfg)], env=_env(4), check=True, timeout=120)
    got = json.loads((tmp_path / "out.json").read_text())
    assert got["devices"] == 4
    ref = _single_device_reference(tmp_path, batch=8)
    for kind in ("tiny", "noisy"):
        assert got[kind + "_ids"] == list(range(37))
        np.testing.assert_allclose(np.asarray(got[kind], np.float32), ref[kind], atol=1e-6, rtol=0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_one_process(tmp_path):
    """jax.distributed on localhost: 2 processes x 2 CPU devices, each reading its own share."""
    store, out = str(tmp_path / "store"), str(tmp_path / "out.json")
    coordinator = f"127.0.0.1:{_free_port()}"
    procs = []
    for pid in (0, 1):
        cfg = {"store": store, "out": out, "batch": 32, "coordinator": coordinator, "pid": pid}
        procs.append(subprocess.Popen([sys.executable, "-c", SCRIPT, json.dumps(cfg)], env=_env(2),
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    try:
        logs = [p.communicate(timeout=90)[0].decode(errors="replace") for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in procs] == [0, 0], logs[0][-2000:] + logs[1][-2000:]
    got = json.loads((tmp_path / "out.json").read_text())
    assert got["devices"] == 4 and got["processes"] == 2
    ref = _single_device_reference(tmp_path, batch=8)
    for kind in ("tiny", "noisy"):
        assert got[kind + "_ids"] == list(range(37))
        np.testing.assert_allclose(np.asarray(got[kind], np.float32), ref[kind], atol=1e-6, rtol=0)
