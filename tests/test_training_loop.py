"""plexbench.training.loop: schedules, clipping, momentum and early stopping against hand
computations; resume after a kill equals the uninterrupted run bit for bit; data parallelism
over two devices equals one device; the trainable model's fresh zero head."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from plexbench.errors import PlexbenchError
from plexbench.models import ModelConfig
from plexbench.models.checkpoint import flatten_params, init_params
from plexbench.training import FinetuneConfig, TrainableModel, TrainData, finetune, make_schedule

REPO = Path(__file__).resolve().parent.parent

# ----------------------------------------------------------------------------- a linear model by hand

X = np.array([[1.0, 0.0, 2.0], [0.0, 1.0, -1.0], [1.0, 1.0, 0.0], [2.0, -1.0, 1.0]], np.float32)
Y = np.array([0, 1, 1, 0])


def linear_apply(params, x, rng):
    return {"logits": (x @ params["w"])[None]}  # one member, (1, B, K)


def hand_gradient(w, x=X, y=Y):
    """d/dW of the mean cross-entropy of softmax(x W): x^T (softmax - onehot) / B."""
    z = x.astype(np.float64) @ w
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    return x.T.astype(np.float64) @ (p - np.eye(2)[y]) / len(y)


def clipped(g, c):
    return g * min(1.0, c / np.linalg.norm(g))


def run_linear(steps, **config):
    cfg = FinetuneConfig(batch_size=4, max_steps=steps, sampling="epochs", **config)
    return finetune(linear_apply, {"w": np.zeros((3, 2), np.float32)}, TrainData(X, Y), cfg)


def test_sgd_with_clipping_and_momentum_by_hand():
    lr, clip, mu = 0.5, 0.1, 0.9
    g0 = clipped(hand_gradient(np.zeros((3, 2))), clip)
    assert np.linalg.norm(hand_gradient(np.zeros((3, 2)))) > clip  # the clip is active
    w1 = -lr * g0
    out = run_linear(1, optimizer="sgd", learning_rate=lr, momentum=mu, clip_norm=clip)
    np.testing.assert_allclose(out.params["w"], w1, rtol=1e-5, atol=1e-7)
    # second step: momentum trace m = mu * g0 + g1, w2 = w1 - lr * m
    g1 = clipped(hand_gradient(w1), clip)
    out = run_linear(2, optimizer="sgd", learning_rate=lr, momentum=mu, clip_norm=clip)
    np.testing.assert_allclose(out.params["w"], w1 - lr * (mu * g0 + g1), rtol=1e-5, atol=1e-7)
    # without clipping the raw gradient is applied
    out = run_linear(1, optimizer="sgd", learning_rate=lr, momentum=0.0, clip_norm=None)
    np.testing.assert_allclose(out.params["w"], -lr * hand_gradient(np.zeros((3, 2))), rtol=1e-5, atol=1e-7)


def hand_warmup_cosine(t, peak, end, warmup, total):
    if t < warmup:
        return peak * t / warmup
    return end + (peak - end) * 0.5 * (1 + math.cos(math.pi * (t - warmup) / (total - warmup)))


@pytest.mark.parametrize("warmup,total", [(3, 12), (40, 12), (1, 2)])
def test_warmup_cosine_schedule_by_hand(warmup, total):
    cfg = FinetuneConfig(schedule="warmup_cosine", learning_rate=0.2, end_learning_rate=0.01,
                         warmup_steps=warmup, max_steps=total)
    schedule = make_schedule(cfg)
    w = min(warmup, max(1, total // 2))  # the warmup is capped at half the run
    for t in range(total + 1):
        assert float(schedule(t)) == pytest.approx(hand_warmup_cosine(t, 0.2, 0.01, w, max(total, 2)), abs=1e-7)
    assert float(make_schedule(dataclasses.replace(cfg, schedule="constant"))(5)) == pytest.approx(0.2)


def test_loop_applies_the_schedule_step_by_step():
    # loss = sum(w * c): the gradient is c at every step, so plain SGD gives w_T = -c * sum_t lr_t
    c = np.array([[0.5, -1.0], [2.0, 0.25], [1.0, 0.0]])

    def loss_fn(outputs, labels):
        return jnp.sum(outputs["w"] * c)

    def apply(params, x, rng):
        return {"w": params["w"], "logits": jnp.zeros((1, x.shape[0], 2))}

    total, warmup, peak, end = 9, 3, 0.3, 0.05
    cfg = FinetuneConfig(optimizer="sgd", momentum=0.0, clip_norm=None, schedule="warmup_cosine", learning_rate=peak,
                         end_learning_rate=end, warmup_steps=warmup, max_steps=total, batch_size=4, sampling="epochs")
    out = finetune(apply, {"w": np.zeros((3, 2), np.float32)}, TrainData(X, Y), cfg, loss_fn=loss_fn)
    lrs = [hand_warmup_cosine(t, peak, end, warmup, total) for t in range(total)]
    np.testing.assert_allclose(out.params["w"], -c * sum(lrs), rtol=1e-5)


def test_adamw_decays_kernels_only():
    # zero gradient: Adam's update is 0, so only the decoupled weight decay acts, on `kernel` leaves
    def apply(params, x, rng):
        return {"logits": jnp.zeros((1, x.shape[0], 2)) + 0.0 * (params["layer"]["kernel"].sum() + params["layer"]["bias"].sum())}

    params = {"layer": {"kernel": np.ones((2, 2), np.float32), "bias": np.ones(2, np.float32)}}
    cfg = FinetuneConfig(optimizer="adamw", learning_rate=0.1, weight_decay=0.5, clip_norm=None, max_steps=1,
                         batch_size=4, sampling="epochs")
    out = finetune(apply, params, TrainData(X, Y), cfg)
    np.testing.assert_allclose(out.params["layer"]["kernel"], 1 - 0.1 * 0.5, rtol=1e-6)
    np.testing.assert_allclose(out.params["layer"]["bias"], 1.0)


# ----------------------------------------------------------------------------- early stopping


def scripted(values):
    calls = iter(values)
    return lambda params: next(calls)


def test_early_stopping_on_a_scripted_validation_sequence():
    # the module docstring's worked example: evals at 5..25, best 15 (tie at 15 beats 10), stop at 25
    cfg = dict(optimizer="sgd", learning_rate=0.1, eval_every=5, patience=10)
    out = finetune(linear_apply, {"w": np.zeros((3, 2), np.float32)}, TrainData(X, Y),
                   FinetuneConfig(batch_size=4, max_steps=100, sampling="epochs", **cfg),
                   evaluate=scripted([0.5, 0.7, 0.7, 0.6, 0.6]))
    assert out.evals == [(5, 0.5), (10, 0.7), (15, 0.7), (20, 0.6), (25, 0.6)]
    assert (out.best_step, out.best_metric, out.steps, out.stopped_early) == (15, 0.7, 25, True)
    # the kept parameters are those after 15 updates
    plain = finetune(linear_apply, {"w": np.zeros((3, 2), np.float32)}, TrainData(X, Y),
                     FinetuneConfig(batch_size=4, max_steps=15, sampling="epochs", optimizer="sgd", learning_rate=0.1))
    np.testing.assert_array_equal(out.params["w"], plain.params["w"])


def test_evaluation_at_the_last_step_and_no_patience():
    out = finetune(linear_apply, {"w": np.zeros((3, 2), np.float32)}, TrainData(X, Y),
                   FinetuneConfig(batch_size=4, max_steps=12, sampling="epochs", eval_every=5),
                   evaluate=scripted([0.9, 0.1, 0.2]))
    assert out.evals == [(5, 0.9), (10, 0.1), (12, 0.2)] and out.best_step == 5 and not out.stopped_early


# ----------------------------------------------------------------------------- sampling


def test_repeat_sampling_covers_each_example_once_per_pass():
    from plexbench.training.loop import BatchSampler

    sampler = BatchSampler(3, 5, seed=0, mode="repeat")  # a batch larger than the set: the set repeats
    stream = np.concatenate([sampler.next() for _ in range(6)])  # 30 rows = 10 passes
    for p in range(10):
        assert sorted(stream[3 * p:3 * p + 3].tolist()) == [0, 1, 2]
    epochs = BatchSampler(10, 4, seed=0, mode="epochs")
    first = np.concatenate([epochs.next() for _ in range(2)])  # 10 // 4 = 2 batches, the rest dropped
    assert len(set(first.tolist())) == 8
    with pytest.raises(PlexbenchError, match="fewer than one batch"):
        BatchSampler(3, 4, seed=0, mode="epochs")


# ----------------------------------------------------------------------------- a real ViT: kill and resume


TINY = ModelConfig(image_size=14, patch_size=7, hidden_size=8, mlp_dim=8, num_heads=2, num_layers=2, num_classes=3,
                   ensemble_size=2, be_layers=(1,), head="heteroscedastic", num_factors=1, num_mc_samples=4)


@pytest.fixture(scope="module")
def tiny():
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, size=(10, 14, 14, 3)).astype(np.float32)
    labels = rng.integers(0, 3, 10)
    model = TrainableModel("tiny", TINY, preprocess=None, identity={"tiny": 1}, params=init_params(TINY, 0))
    return model, TrainData(images, labels)


def vit_run(tiny, **kw):
    model, data = tiny
    cfg = FinetuneConfig(optimizer="sgd", learning_rate=0.05, batch_size=16, max_steps=17, sampling="repeat",
                         eval_every=4, patience=100, seed=3, rng_seed=5)
    val = TrainData(data.inputs[:6], data.labels[:6])
    forward = jax.jit(model.apply_fn(num_mc_samples=2))

    def evaluate(params):
        out = forward(params, val.inputs, np.zeros((6, 2), np.uint32))
        return float(np.mean(np.asarray(out["log_probs"]).argmax(1) == val.labels))

    return finetune(model.apply_fn(num_mc_samples=2), model.with_zero_head(3), data, cfg, evaluate=evaluate, **kw)


class Killed(Exception):
    pass


def test_resume_after_kill_equals_uninterrupted(tiny, tmp_path):
    whole = vit_run(tiny)
    ckpt = tmp_path / "state.npz"

    def kill_after_step_9(step, loss):
        if step == 9:
            raise Killed  # checkpoints were written at steps 3, 6, 9 (every 3), the run dies after step 9's

    def kill_after_step_14(step, loss):
        if step == 14:
            raise Killed  # last checkpoint at 12: steps 13 and 14 are lost and redone on resume

    with pytest.raises(Killed):
        vit_run(tiny, checkpoint=ckpt, checkpoint_every=3, callback=kill_after_step_9)
    with pytest.raises(Killed):
        vit_run(tiny, checkpoint=ckpt, checkpoint_every=3, callback=kill_after_step_14)
    resumed = vit_run(tiny, checkpoint=ckpt, checkpoint_every=3)
    assert resumed.resumed_from == 12
    a, b = flatten_params(whole.params), flatten_params(resumed.params)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert (resumed.steps, resumed.best_step, resumed.evals) == (whole.steps, whole.best_step, whole.evals)
    # a finished checkpoint returns the result again without training
    again = vit_run(tiny, checkpoint=ckpt, checkpoint_every=3)
    assert again.resumed_from == 17 and again.losses == []
    assert all(np.array_equal(flatten_params(again.params)[k], a[k]) for k in a)


def test_checkpoint_of_another_run_is_refused(tiny, tmp_path):
    model, data = tiny
    ckpt = tmp_path / "state.npz"
    vit_run(tiny, checkpoint=ckpt, checkpoint_every=5)
    other = FinetuneConfig(optimizer="sgd", learning_rate=0.01, batch_size=16, max_steps=17)
    with pytest.raises(PlexbenchError, match="belongs to another run"):
        finetune(model.apply_fn(num_mc_samples=2), model.with_zero_head(3), data, other, checkpoint=ckpt)


def test_zero_head_and_head_only_training(tiny):
    model, data = tiny
    params = model.with_zero_head(5)
    head = flatten_params({"head": params["head"]})
    assert all(not v.any() for k, v in head.items() if k.endswith(("kernel", "bias")))
    assert any(k.endswith("fast_weight_alpha") for k in head)  # BatchEnsemble fast weights kept (random signs)
    trunk = flatten_params({k: v for k, v in params.items() if k != "head"})
    pre = flatten_params({k: v for k, v in model.pretrained.items() if k != "head"})
    assert all(np.array_equal(trunk[k], pre[k]) for k in trunk)
    out = jax.jit(model.apply_fn(5))(params, data.inputs[:4], np.zeros((4, 2), np.uint32))
    np.testing.assert_allclose(np.exp(np.asarray(out["log_probs"])), 0.2, atol=1e-6)  # uniform predictions
    cfg = FinetuneConfig(learning_rate=0.1, batch_size=8, max_steps=3, trainable="head")
    trained = finetune(model.apply_fn(5, num_mc_samples=2), params, data, cfg)
    after = flatten_params(trained.params)
    assert all(np.array_equal(after[k], flatten_params(params)[k]) for k in after if not k.startswith("head/"))
    assert any(not np.array_equal(after[k], flatten_params(params)[k]) for k in after if k.startswith("head/"))


def test_batch_not_divisible_by_devices_and_missing_evaluate():
    with pytest.raises(PlexbenchError, match="needs an evaluate function"):
        run_linear(3, eval_every=1)
    with pytest.raises(PlexbenchError, match="patience needs eval_every"):
        FinetuneConfig(patience=3)


# ----------------------------------------------------------------------------- two devices


SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    import jax
    from plexbench.models.checkpoint import flatten_params, init_params
    from plexbench.training import FinetuneConfig, TrainableModel, TrainData, finetune
    from plexbench.models import ModelConfig
    cfg = ModelConfig(image_size=14, patch_size=7, hidden_size=8, mlp_dim=8, num_heads=2, num_layers=2, num_classes=3)
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, size=(12, 14, 14, 3)).astype(np.float32)
    labels = rng.integers(0, 3, 12)
    model = TrainableModel("t", cfg, preprocess=None, identity={}, params=init_params(cfg, 0))
    out = finetune(model.apply_fn(), model.pretrained, TrainData(images, labels),
                   FinetuneConfig(learning_rate=0.1, batch_size=8, max_steps=5))
    flat = flatten_params(out.params)
    print(json.dumps({"devices": jax.local_device_count(), "params": {k: v.tolist() for k, v in flat.items()},
                      "losses": out.losses}))
""")


def run_devices(n):
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={n}", JAX_PLATFORMS="cpu",
               PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_two_devices_split_the_batch_and_match_one_device():
    one, two = run_devices(1), run_devices(2)
    assert (one["devices"], two["devices"]) == (1, 2)
    np.testing.assert_allclose(two["losses"], one["losses"], rtol=1e-5)
    for k in one["params"]:
        np.testing.assert_allclose(two["params"][k], one["params"][k], rtol=1e-4, atol=1e-6)
