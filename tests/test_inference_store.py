"""The prediction store: reuse without model work, resume, corruption, full disk, concurrency.

Each test runs the tiny ensemble (plexbench.inference.testing) over 50 synthetic examples in
chunks of 16 (chunks [0,16) [16,32) [32,48) [48,50)) and checks the stored numbers against the
float64 numpy forward (testing.numpy_tiny_ensemble), never against an earlier run.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import threading

import numpy as np
import pytest

from plexbench import OUTPUT_FORMAT_VERSION
from plexbench.errors import PlexbenchError
from plexbench.inference import ModelHandle, array_source, predict
from plexbench.inference import store as st
from plexbench.inference import testing as T
from plexbench.inference.handle import wrap_module_apply

N, CHUNK = 50, 16
IMAGES = T.random_images(N, seed=2)
LABELS = np.arange(N) % 3


_SHARED: dict = {}


def _shared(seed: int):
    """One module, params and apply_fn per seed for the whole file: handles that share an
    apply_fn share its compiled program (engine._STEPS), which keeps these tests fast."""
    if seed not in _SHARED:
        module = T.make_tiny_ensemble(2)
        _SHARED[seed] = (module, T.init(module, seed), wrap_module_apply(module))
    return _SHARED[seed]


class Counting:
    """A tiny-ensemble handle that counts params loads and examples read (and, with
    `fresh_apply`, model traces: a new apply_fn that no compiled program knows yet)."""

    def __init__(self, seed=0, fresh_apply=False):
        self.module, self.params, shared_apply = _shared(seed)
        self.traces = 0
        self.loads = 0
        self.reads: list[tuple[int, int]] = []  # (start, stop) of every batches() call
        self.examples_read = 0
        apply = shared_apply
        if fresh_apply:
            def apply(p, x, k):
                self.traces += 1
                return shared_apply(p, x, k)

        def load():
            self.loads += 1
            return self.params

        self.handle = ModelHandle("tiny", apply, load_params=load, identity={"tiny": seed}, num_members=2,
                                  num_classes=3, uses_rng=False)
        base = array_source("synthetic", "test", IMAGES, LABELS)

        def batches(**kw):
            self.reads.append((kw["start"], kw["stop"]))
            for b in base.batches(**kw):
                self.examples_read += int(b["mask"].sum())
                yield b

        self.source = base.__class__(**{**base.__dict__, "batches": batches})

    def predict(self, store, **kw):
        kw.setdefault("batch_size", 8)
        kw.setdefault("chunk_size", CHUNK)
        kw.setdefault("verbose", False)
        return predict(self.handle, "synthetic", "test", store_dir=store, source=self.source, **kw)

    def oracle(self):
        return T.numpy_tiny_ensemble(self.params, IMAGES)


def assert_correct(entry, model: Counting):
    oracle = model.oracle()
    np.testing.assert_allclose(entry.logits, oracle["logits"], atol=2e-6, rtol=1e-5)
    np.testing.assert_array_equal(entry.labels, LABELS)
    np.testing.assert_array_equal(entry.ids, np.arange(N))


def test_store_hit_needs_no_model_work(tmp_path):
    model = Counting(fresh_apply=True)
    first = model.predict(tmp_path)
    assert_correct(first, model)
    assert model.loads == 1 and model.traces >= 1 and model.examples_read == N
    traces, reads = model.traces, len(model.reads)
    # A second handle object with the same identity, a different batch size: same entry, no work.
    again = Counting(fresh_apply=True)
    second = again.predict(tmp_path, batch_size=5)
    assert second.key == first.key
    assert again.loads == 0 and again.traces == 0 and again.reads == []
    assert model.traces == traces and len(model.reads) == reads
    assert_correct(second, model)


def test_key_depends_on_what_changes_the_numbers(tmp_path):
    model = Counting()
    base = model.predict(tmp_path)
    assert base.manifest["key_fields"]["output_format_version"] == OUTPUT_FORMAT_VERSION
    keys = {base.key}
    keys.add(model.predict(tmp_path, seed=1).key)
    keys.add(model.predict(tmp_path, dtype="bfloat16").key)
    other = Counting(seed=1)  # other weights -> other identity
    keys.add(other.predict(tmp_path).key)
    shifted = Counting()
    shifted.source = array_source("synthetic", "test", IMAGES + 1, LABELS)  # other data -> other fingerprint
    keys.add(shifted.predict(tmp_path).key)
    assert len(keys) == 5
    assert st.entry_key(base.manifest["key_fields"]) == base.key


def test_format_is_readable_with_numpy_and_json(tmp_path):
    model = Counting()
    entry = model.predict(tmp_path)
    manifest = json.loads((entry.path / "manifest.json").read_text())
    assert manifest["num_chunks"] == 4 and manifest["complete"]
    parts = []
    for rec in manifest["chunks"]:
        data = (entry.path / rec["file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == rec["sha256"] and len(data) == rec["bytes"]
        with np.load(entry.path / rec["file"], allow_pickle=False) as z:
            parts.append({k: z[k] for k in z.files})
            assert (rec["start"], rec["stop"]) == (int(z["ids"][0]), int(z["ids"][-1]) + 1)
    logits = np.concatenate([p["logits"] for p in parts], axis=1)
    np.testing.assert_allclose(logits, model.oracle()["logits"], atol=2e-6, rtol=1e-5)
    assert [p["ids"].shape[0] for p in parts] == [16, 16, 16, 2]


class Interrupt(Exception):
    pass


def test_interrupted_run_resumes_with_missing_chunks_only(tmp_path, monkeypatch):
    model = Counting()
    real_write = st.write_chunk
    written = []

    def write_two_then_stop(path, manifest, index, arrays, **kw):
        if len(written) == 2:
            raise Interrupt  # as if the process were killed while computing chunk 2
        written.append(index)
        real_write(path, manifest, index, arrays, **kw)

    monkeypatch.setattr(st, "write_chunk", write_two_then_stop)
    with pytest.raises(Interrupt):
        model.predict(tmp_path)
    monkeypatch.setattr(st, "write_chunk", real_write)
    (path,) = [p for p in tmp_path.iterdir()]
    partial = st.read_manifest(path)
    assert written == [0, 1] and not partial["complete"]
    assert [rec is not None for rec in partial["chunks"]] == [True, True, False, False]

    resumed = Counting()
    entry = resumed.predict(tmp_path)
    assert resumed.reads == [(32, 50)] and resumed.examples_read == 18  # only chunks 2 and 3
    assert_correct(entry, model)


def test_damaged_chunk_is_detected_and_recomputed(tmp_path, capsys):
    model = Counting()
    entry = model.predict(tmp_path)
    chunk = entry.path / "chunk-000001.npz"
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte inside the logits
    chunk.write_bytes(bytes(data))
    with pytest.raises(PlexbenchError, match="checksum"):
        st.StoreEntry(entry.path).logits  # reading a damaged entry directly: one line
    again = Counting()
    fixed = again.predict(tmp_path, verbose=True)
    assert again.reads == [(16, 32)] and again.examples_read == 16
    assert "damaged" in capsys.readouterr().err
    assert_correct(fixed, model)
    # A truncated (unreadable) chunk, too.
    last = entry.path / "chunk-000003.npz"
    last.write_bytes(last.read_bytes()[:40])
    third = Counting()
    assert_correct(third.predict(tmp_path), model)
    assert third.reads == [(48, 50)]


def test_corrupt_manifest_is_one_line_error_and_keeps_files(tmp_path):
    model = Counting()
    entry = model.predict(tmp_path)
    before = {p.name: p.read_bytes() for p in entry.path.glob("chunk-*.npz")}
    (entry.path / "manifest.json").write_text('{"format": "plexbench-prediction-store", "chun')
    with pytest.raises(PlexbenchError, match="corrupt store entry") as e:
        Counting().predict(tmp_path)
    assert "\n" not in str(e.value)
    assert {p.name: p.read_bytes() for p in entry.path.glob("chunk-*.npz")} == before


def test_full_disk_keeps_earlier_chunks(tmp_path, monkeypatch):
    model = Counting()
    real_fsync = os.fsync
    calls = []

    def fsync_fills_disk(fd):
        calls.append(fd)
        if len(calls) == 5:  # chunk 0, manifest, chunk 1, manifest, then chunk 2 hits a full disk
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync_fills_disk)
    with pytest.raises(PlexbenchError, match="disk full") as e:
        model.predict(tmp_path)
    assert "\n" not in str(e.value)
    monkeypatch.setattr(os, "fsync", real_fsync)
    (path,) = [p for p in tmp_path.iterdir()]
    manifest = st.read_manifest(path)
    assert [st.chunk_is_valid(path, rec) for rec in manifest["chunks"]] == [True, True, False, False]
    assert not [p for p in path.iterdir() if p.name.endswith(".tmp")]  # no temp file left behind
    oracle = model.oracle()["logits"]
    for rec in manifest["chunks"][:2]:
        stored = st.read_chunk(path, rec)
        np.testing.assert_allclose(stored["logits"], oracle[:, rec["start"]:rec["stop"]], atol=2e-6, rtol=1e-5)
    resumed = Counting()
    assert_correct(resumed.predict(tmp_path), model)
    assert resumed.reads == [(32, 50)]


def test_two_writers_of_one_entry(tmp_path):
    """Two threads predict the same entry at once: one computes, the other waits and reuses.

    fcntl locks belong to open file descriptions, so two threads conflict like two processes.
    """
    models = [Counting(), Counting()]
    results, errors = [None, None], []
    start = threading.Barrier(2)

    def work(i):
        try:
            start.wait()
            results[i] = models[i].predict(tmp_path)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert sorted(m.examples_read for m in models) == [0, N]  # the examples were computed once
    for entry in results:
        assert_correct(entry, models[0])
    assert results[0].key == results[1].key


def test_pre_logits_added_later_recompute_and_reuse(tmp_path):
    model = Counting()
    without = model.predict(tmp_path, with_pre_logits=False)
    assert without.pre_logits is None
    again = Counting()
    with_pre = again.predict(tmp_path, with_pre_logits=True)
    assert again.examples_read == N and with_pre.key == without.key
    np.testing.assert_allclose(with_pre.pre_logits, model.oracle()["pre_logits"], atol=2e-6, rtol=1e-5)
    third = Counting()
    assert third.predict(tmp_path, with_pre_logits=False).pre_logits is not None
    assert third.examples_read == 0


@pytest.mark.parametrize("n, size, want", [(50, 16, [(0, 16), (16, 32), (32, 48), (48, 50)]), (16, 16, [(0, 16)]),
                                           (1, 8, [(0, 1)])])
def test_chunk_ranges(n, size, want):
    assert st.chunk_ranges(n, size) == want


def test_default_chunk_size():
    # 64 MiB / (4 B * 3 * (21843 + 1024)) = 244.6 -> below the 256 floor -> 256.
    assert st.default_chunk_size(3, 21843) == 256
    # 64 MiB / (4 * 1 * (10 + 1024)) = 16226 -> capped at 8192.
    assert st.default_chunk_size(1, 10) == 8192
    # 64 MiB / (4 * 3 * (1000 + 1024)) = 2762.9 -> 2560 (multiple of 256).
    assert st.default_chunk_size(3, 1000) == 2560


def test_store_listing_and_lookup(tmp_path):
    model = Counting()
    entry = model.predict(tmp_path)
    rows = st.list_entries(tmp_path)
    assert len(rows) == 1 and rows[0]["status"] == "complete" and rows[0]["examples"] == N
    assert st.find_entry(tmp_path, entry.key[:8]).key == entry.key
    with pytest.raises(PlexbenchError, match="match"):
        st.find_entry(tmp_path, "ffff0000")
