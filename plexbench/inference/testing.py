"""Tiny Flax models following the apply convention, for tests, benchmarks and examples.

They are small enough to compile in well under a second on a CPU and simple enough to compute by
hand (numpy) as an independent oracle:

- `TinyEnsemble`: x = flatten(images) (B, P); h = tanh(x @ W + b) (B, D);
  member m: pre_logits_m = h * alpha[m] (B, D); logits_m = pre_logits_m @ V + c[m] (B, K).
- `TinyNoisy`: TinyEnsemble with E = 1 plus noise: logits += 0.1 * normal(rng, (B, K)); the
  noise uses the batch's single key, so only a per-example key makes it batch-independent.
- `TinyPlain`: returns plain logits (B, K) = flatten(images) @ W (no dict), as user models may.

`tiny_classifier()` / `tiny_plain_classifier()` are callables for `--model
plexbench.inference.testing:tiny_classifier` (they return (module, params, info)).
"""

from __future__ import annotations

import numpy as np

IMAGE_SHAPE = (4, 4, 3)


_CLASSES: dict = {}


def _classes() -> dict:
    """The Flax module classes, defined on first use (importing this module does not import JAX)."""
    if _CLASSES:
        return _CLASSES
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    class TinyEnsemble(nn.Module):
        members: int
        hidden: int
        classes: int

        @nn.compact
        def __call__(self, images, rng=None):
            x = images.reshape(images.shape[0], -1)
            h = jnp.tanh(nn.Dense(self.hidden, name="hidden")(x))
            alpha = self.param("alpha", nn.initializers.normal(1.0), (self.members, self.hidden))
            v = self.param("head", nn.initializers.normal(1.0), (self.hidden, self.classes))
            c = self.param("bias", nn.initializers.normal(1.0), (self.members, self.classes))
            pre = h[None] * alpha[:, None, :]
            logits = jnp.einsum("ebd,dk->ebk", pre, v) + c[:, None, :]
            log_probs = jax.nn.logsumexp(jax.nn.log_softmax(logits), axis=0) - jnp.log(self.members)
            return {"logits": logits, "pre_logits": pre, "log_probs": log_probs}

    class TinyNoisy(nn.Module):
        hidden: int
        classes: int
        scale: float

        @nn.compact
        def __call__(self, images, rng=None):
            out = dict(TinyEnsemble(1, self.hidden, self.classes, name="base")(images))
            noise = self.scale * jax.random.normal(rng, out["logits"].shape[1:])
            out["logits"] = out["logits"] + noise[None]
            return out

    class TinyPlain(nn.Module):
        classes: int

        @nn.compact
        def __call__(self, images):
            return nn.Dense(self.classes, use_bias=False, name="w")(images.reshape(images.shape[0], -1))

    _CLASSES.update(TinyEnsemble=TinyEnsemble, TinyNoisy=TinyNoisy, TinyPlain=TinyPlain)
    return _CLASSES


def make_tiny_ensemble(num_members: int = 2, hidden: int = 5, num_classes: int = 3):
    return _classes()["TinyEnsemble"](num_members, hidden, num_classes)


def make_tiny_noisy(hidden: int = 5, num_classes: int = 3, scale: float = 0.1):
    return _classes()["TinyNoisy"](hidden, num_classes, scale)


def make_tiny_plain(num_classes: int = 3):
    return _classes()["TinyPlain"](num_classes)


def init(module, seed: int = 0, image_shape=IMAGE_SHAPE):
    """float32 params of `module` for images of `image_shape`."""
    import inspect

    import jax
    import jax.numpy as jnp

    images = jnp.zeros((1, *image_shape), jnp.float32)
    kwargs = {"rng": jax.random.PRNGKey(0)} if "rng" in inspect.signature(module.__call__).parameters else {}
    # One jit instead of op-by-op initialisation: one compile rather than dozens.
    variables = jax.jit(lambda key: module.init(key, images, **kwargs))(jax.random.PRNGKey(seed))
    return jax.device_get(variables["params"])


def numpy_tiny_ensemble(params, images: np.ndarray) -> dict[str, np.ndarray]:
    """The TinyEnsemble forward in float64 numpy (the oracle): logits (E,B,K), pre_logits (E,B,D)."""
    x = np.asarray(images, np.float64).reshape(len(images), -1)
    h = np.tanh(x @ np.asarray(params["hidden"]["kernel"], np.float64) + np.asarray(params["hidden"]["bias"], np.float64))
    pre = h[None] * np.asarray(params["alpha"], np.float64)[:, None, :]
    logits = pre @ np.asarray(params["head"], np.float64) + np.asarray(params["bias"], np.float64)[:, None, :]
    return {"logits": logits, "pre_logits": pre}


def random_images(n: int, seed: int = 0, image_shape=IMAGE_SHAPE) -> np.ndarray:
    """float32 (n, *image_shape) uniform in [-1, 1]."""
    return np.random.default_rng(seed).uniform(-1, 1, (n, *image_shape)).astype(np.float32)


def tiny_classifier():
    """(TinyEnsemble E=2, params, info) for `--model plexbench.inference.testing:tiny_classifier`."""
    module = make_tiny_ensemble()
    return module, init(module), {"preprocess": "identity"}


def tiny_plain_classifier():
    """(TinyPlain, params): a user model returning plain (B, K) logits."""
    module = make_tiny_plain()
    return module, init(module)


DIGITS_PREPROCESS = "grey_to_rgb|value_range(-1,1)"


def digits_classifier():
    """(TinyEnsemble E=2 for 8x8x3 images, params, info): a user model for the `digits` dataset.

    For `--model plexbench.inference.testing:digits_classifier`; params from seed 0.
    """
    module = make_tiny_ensemble(2, hidden=6, num_classes=10)
    return module, init(module, 0, (8, 8, 3)), {"preprocess": DIGITS_PREPROCESS}


def broken_classifier():
    """A user callable that returns the wrong thing (for error tests)."""
    return "not a model"


def failing_classifier():
    """A user callable that raises (for error tests)."""
    raise RuntimeError("weights went missing")
