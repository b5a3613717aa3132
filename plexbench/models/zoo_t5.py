"""The embedded language zoo: tiny T5.1.1 classifiers trained on the embedded `fortunes` texts.

Models (one trunk: T5.1.1 with d_model 64, 4 heads of 16, gated-GELU MLP 128, 2 encoder + 2
decoder layers, relative position buckets 32 / max distance 128, input length 64 tokens, target
length 1; vocabulary `fortunes`: 1,000 SentencePiece pieces + 100 sentinels, 1,152 embedding
rows; class k of `fortunes` is `<extra_id_k>`):
- `t5-plex-mini`: BatchEnsemble E = 4 on the last decoder layer's MLP + SNGP head over the
  vocabulary (128 random features, input normalisation, mean-field factor 1e-4 as in T5-Plex).
- `t5-det-mini`: the same trunk, E = 1, plain `logits_dense` head.

Vocabulary: a unigram SentencePiece model trained on the `fortunes` train split's texts
(plexbench.models.tokenizer.train_vocab, deterministic), shipped as zoo_weights/fortunes.spm.

Training (`train_t5_params`, a compact optax loop kept in ONE function so it can move onto the
shared training layer later): T5 fine-tuning, i.e. teacher forcing with decoder input [0] and
softmax cross-entropy over the WHOLE vocabulary for the class's label token (members: mean of
their losses; the SNGP head's raw GP logits while training); dropout 0.1 (T5's placement,
plexbench.models.t5; the key of step t is fold_in(PRNGKey(seed + 1), t)); AdamW (b1 0.9, b2 0.999, weight
decay 0.01 on kernels), peak learning rate 2e-3 after 100 warmup steps, cosine decay to 1e-5,
global-norm clipping 1, batch 32, a fixed number of epochs, each a permutation from numpy's
default_rng(seed) (last partial batch dropped); initial weights from PRNGKey(seed) under jit.
SNGP precision: after training, one pass over the training set with the final weights
accumulates P = I + sum phi^T phi over every member's rows (momentum None; spec §12).

Model card (`train_t5_zoo_model`): accuracy, NLL, ECE (15 bins) on the `test` split of the
ensemble probabilities (probability averaging of the mean-field logits; the "paper" readout's
accuracy and NLL too), and a scikit-learn bag-of-words baseline on the same split: TF-IDF of
word unigrams and bigrams (sublinear tf) + multinomial logistic regression, C chosen from
{0.1, 1, 10, 100} by validation accuracy; the card states the difference in accuracy.
Checkpoints are T5X directories written by plexbench.models.t5x_checkpoint: the token embedding
and every leaf with "attention" in its key path (attention kernels and the pre-attention norm
scales) in zarr arrays, the rest (MLPs, final norms, head, SNGP state) inline in `checkpoint`.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from pathlib import Path

import numpy as np

from plexbench import fileio, progress
from plexbench.errors import PlexbenchError
from plexbench.models.t5_config import T5Config
from plexbench.registry import unknown_name_message

DATASET = "fortunes"
VOCAB = "fortunes"
VOCAB_FILE = "fortunes.spm"
VOCAB_PIECES = 1000
EXTRA_IDS = 100
INPUT_LENGTH = 64
NUM_CLASSES = 6
PREPROCESS = f"text_input|tokenize({VOCAB},{INPUT_LENGTH})"
BASELINE_C = (0.1, 1.0, 10.0, 100.0)


def embedding_rows(pieces: int, extra_ids: int = EXTRA_IDS) -> int:
    """pieces + sentinels rounded up to a multiple of 128 (T5's padding: 32100 -> 32128)."""
    return -(-(pieces + extra_ids) // 128) * 128


def label_token_ids(pieces: int = VOCAB_PIECES, classes: int = NUM_CLASSES, extra_ids: int = EXTRA_IDS) -> tuple[int, ...]:
    """Ids of <extra_id_0..classes-1>: pieces + extra_ids - 1 - k."""
    return tuple(pieces + extra_ids - 1 - k for k in range(classes))


TRUNK = dict(vocab_size=embedding_rows(VOCAB_PIECES), d_model=64, num_heads=4, head_dim=16, mlp_dim=128,
             num_encoder_layers=2, num_decoder_layers=2, label_tokens=label_token_ids(), input_length=INPUT_LENGTH)
PLEX = dict(ensemble_size=4, head="sngp", gp_hidden_features=128)
DET = dict(ensemble_size=1, head="dense")


@dataclasses.dataclass(frozen=True)
class T5Recipe:
    """How one language zoo model is built and trained (module docstring)."""

    name: str
    config: T5Config
    family: str
    description: str
    dataset: str = DATASET
    seed: int = 0
    epochs: int = 12
    batch_size: int = 32
    learning_rate: float = 2e-3
    end_learning_rate: float = 1e-5
    warmup_steps: int = 100
    weight_decay: float = 0.01
    dropout_rate: float = 0.1

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["config"] = self.config.to_dict()
        return d


T5_RECIPES: dict[str, T5Recipe] = {
    "t5-plex-mini": T5Recipe("t5-plex-mini", T5Config(**TRUNK, **PLEX), "plex",
                             "zoo: tiny T5.1.1, BatchEnsemble E=4 on the last decoder MLP + SNGP head, fortunes (6 topics)"),
    "t5-det-mini": T5Recipe("t5-det-mini", T5Config(**TRUNK, **DET), "deterministic",
                            "zoo: tiny T5.1.1, plain logits_dense head, fortunes (6 topics)"),
}


def get_t5_recipe(name: str) -> T5Recipe:
    if name not in T5_RECIPES:
        raise PlexbenchError(unknown_name_message("language zoo model", name, list(T5_RECIPES)))
    return T5_RECIPES[name]


# ---------------------------------------------------------------------------- data


def load_split(role: str, data_dir) -> tuple[list[str], np.ndarray]:
    """(texts, labels int64) of a role of `fortunes`, in dataset order (prepared on first use)."""
    from plexbench.data.prepare import prepare
    from plexbench.data.text import load_texts

    prepare(DATASET, data_dir)  # embedded and offline: a no-op once prepared
    data = load_texts(DATASET, role, data_dir)
    return list(data["texts"]["text"]), np.asarray(data["label"], np.int64)


def vocabulary(out_dir: Path, train_texts: list[str]):
    """The `fortunes` tokenizer: `out_dir/fortunes.spm`, trained there from the train texts if absent."""
    from plexbench.models.tokenizer import Tokenizer, train_vocab

    path = out_dir / VOCAB_FILE
    if path.is_file():
        tok = Tokenizer(path.read_bytes(), EXTRA_IDS, VOCAB)
    else:
        tok = train_vocab(train_texts, path, vocab_size=VOCAB_PIECES)
    if tok.num_pieces != VOCAB_PIECES:
        raise PlexbenchError(f"{path} has {tok.num_pieces} pieces; the language zoo configs need {VOCAB_PIECES}")
    return tok


# ---------------------------------------------------------------------------- training


def train_t5_params(recipe: T5Recipe, tokens: np.ndarray, labels: np.ndarray, *,
                    max_steps: int | None = None) -> tuple[dict, int, float]:
    """Train a language zoo model from its seed (module docstring): the compact optax loop.

    tokens int32 (N, L), labels int64 (N,) class ids. Returns (tree as nested numpy dict with
    the SNGP state as decoder/gp_head_state, steps taken, mean loss of the last 20 steps).
    """
    import jax
    import jax.numpy as jnp
    import optax

    from plexbench.models.checkpoint import flatten_params, unflatten_params
    from plexbench.models.sngp import GP_STATE, merge_state
    from plexbench.models.t5 import build_t5

    c = recipe.config
    model = build_t5(c)
    train_model = build_t5(c, dropout_rate=recipe.dropout_rate)
    bs = recipe.batch_size
    per_epoch = len(tokens) // bs
    if per_epoch == 0:
        raise PlexbenchError(f"zoo {recipe.name}: {len(tokens)} training examples, fewer than one batch of {bs}")
    total = recipe.epochs * per_epoch if max_steps is None else min(max_steps, recipe.epochs * per_epoch)
    targets = np.asarray(c.label_tokens, np.int32)[labels][:, None]  # (N, 1) label-token ids

    variables = jax.jit(lambda k: model.init(k, jnp.asarray(tokens[:1])))(jax.random.PRNGKey(recipe.seed))
    params, state = variables["params"], {k: v for k, v in variables.items() if k != "params"}
    schedule = optax.warmup_cosine_decay_schedule(0.0, recipe.learning_rate, min(recipe.warmup_steps, max(1, total // 2)),
                                                  max(total, 2), recipe.end_learning_rate)
    kernels = lambda p: jax.tree_util.tree_map_with_path(lambda path, _: path[-1].key == "kernel", p)  # noqa: E731
    opt = optax.chain(optax.clip_by_global_norm(1.0),
                      optax.adamw(schedule, weight_decay=recipe.weight_decay, mask=kernels))
    opt_state = opt.init(params)

    def loss_fn(p, x, y, key):
        out = train_model.apply({"params": p, **state}, x, targets=y, vocab_logits=True, rngs={"dropout": key})
        log_p = jax.nn.log_softmax(out["vocab_logits"], axis=-1)  # (E, B, 1, V)
        return -jnp.mean(jnp.take_along_axis(log_p, y[None, :, :, None], axis=-1))

    @jax.jit
    def step(p, s, x, y, key):
        loss, grads = jax.value_and_grad(loss_fn)(p, x, y, key)
        updates, s = opt.update(grads, s, p)
        return optax.apply_updates(p, updates), s, loss

    dropout_key = jax.random.PRNGKey(recipe.seed + 1)
    order, done, losses = np.random.default_rng(recipe.seed), 0, []
    with progress.bar(total, f"train {recipe.name}", unit="step") as bar:
        while done < total:
            perm = order.permutation(len(tokens))
            for b in range(per_epoch):
                if done == total:
                    break
                idx = perm[b * bs:(b + 1) * bs]
                params, opt_state, loss = step(params, opt_state, jnp.asarray(tokens[idx]), jnp.asarray(targets[idx]),
                                               jax.random.fold_in(dropout_key, done))
                losses.append(float(loss))
                done += 1
                bar.update(1)

    if c.head == "sngp":  # one pass with the final weights: P = I + sum phi^T phi (spec §12)
        @jax.jit
        def accumulate(st, x, y, w):
            _, new = model.apply({"params": params, **st}, x, targets=y, vocab_logits=True, update_covariance=True,
                                 weights=jnp.tile(w, c.ensemble_size), mutable=[GP_STATE])
            return new

        gp = state[GP_STATE]["decoder"]["gp_head"]
        gp["laplace_covariance"]["covmat_layer"]["precision_matrix"] = jnp.eye(c.gp_hidden_features)
        gp["step"] = jnp.zeros((), jnp.int32)
        for lo in range(0, len(tokens), bs):
            x, y = tokens[lo:lo + bs], targets[lo:lo + bs]
            w = np.ones(bs, np.float32)
            if len(x) < bs:  # pad to one compiled shape; padding rows have weight 0
                w[len(x):] = 0
                x = np.concatenate([x, np.zeros((bs - len(x), x.shape[1]), x.dtype)])
                y = np.concatenate([y, np.repeat(y[:1], bs - len(y), axis=0)])
            state = dict(accumulate(state, jnp.asarray(x), jnp.asarray(y), jnp.asarray(w)))
    tree = merge_state({"params": params, **state})
    flat = {k: (np.asarray(v, np.int32) if k.endswith("/step") else np.asarray(v, np.float32))
            for k, v in flatten_params(jax.device_get(tree)).items()}
    return unflatten_params(flat), done, float(np.mean(losses[-20:]))


# ---------------------------------------------------------------------------- evaluation


def predict_log_probs(config: T5Config, tree: dict, tokens: np.ndarray, *, readout: str = "average",
                      batch_size: int = 256) -> np.ndarray:
    """Ensemble log-probabilities (N, C) float32 over the label tokens (mean-field logits)."""
    run = _compiled_eval(config, readout)
    out = []
    for lo in range(0, len(tokens), batch_size):
        x = tokens[lo:lo + batch_size]
        pad = batch_size - len(x)
        if pad:  # one compiled shape
            x = np.concatenate([x, np.zeros((pad, x.shape[1]), x.dtype)])
        out.append(np.asarray(run(tree, x))[:batch_size - pad])
    return np.concatenate(out)


@functools.lru_cache(maxsize=8)
def _compiled_eval(config: T5Config, readout: str):
    import jax

    from plexbench.models.sngp import split_state
    from plexbench.models.t5 import build_t5

    module = build_t5(config, readout=readout)
    return jax.jit(lambda tree, x: module.apply(split_state(tree), x)["log_probs"][:, 0])


def card_metrics(labels: np.ndarray, log_probs: np.ndarray) -> dict[str, float]:
    from plexbench import metrics

    probs = np.exp(log_probs.astype(np.float64))
    probs /= probs.sum(axis=1, keepdims=True)
    return {"accuracy": metrics.accuracy(labels, probs), "nll": metrics.nll(labels, log_probs),
            "ece": metrics.ece(labels, probs, num_bins=15)}


def bag_of_words_baseline(train: tuple[list[str], np.ndarray], validation: tuple[list[str], np.ndarray],
                          test: tuple[list[str], np.ndarray]) -> dict:
    """TF-IDF (word 1-2 grams, sublinear tf) + logistic regression, C by validation accuracy;
    returns the test accuracy / NLL / ECE and the chosen C."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)
    x_train = vectorizer.fit_transform(train[0])
    x_val, x_test = vectorizer.transform(validation[0]), vectorizer.transform(test[0])
    best = None
    for c in BASELINE_C:
        clf = LogisticRegression(C=c, max_iter=2000).fit(x_train, train[1])
        acc = float(np.mean(clf.predict(x_val) == validation[1]))
        if best is None or acc > best[0]:
            best = (acc, c, clf)
    _, c, clf = best
    log_probs = np.log(np.clip(clf.predict_proba(x_test), 1e-300, None))
    return {"model": "TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True) + LogisticRegression(max_iter=2000)",
            "C": c, "C_grid": list(BASELINE_C), "num_features": int(x_train.shape[1]),
            **card_metrics(test[1], log_probs)}


# ---------------------------------------------------------------------------- the whole job


def train_t5_zoo_model(name: str, data_dir=None, out_dir=None, *, max_steps: int | None = None) -> dict:
    """Train `name`, write `{out_dir}/{name}/` (T5X directory), `{name}.json` (model card) and,
    if absent, the vocabulary `{out_dir}/fortunes.spm`; return the card."""
    from plexbench import paths
    from plexbench.models.config import param_count
    from plexbench.models.flops import flops_per_example
    from plexbench.models.t5x_checkpoint import directory_bytes, directory_sha256, write_t5x_checkpoint
    from plexbench.provenance import provenance

    recipe = get_t5_recipe(name)
    out_dir = Path(out_dir) if out_dir else paths.cache_root() / "zoo_weights"
    out_dir.mkdir(parents=True, exist_ok=True)
    data_dir = paths.data_dir(data_dir)
    splits = {role: load_split(role, data_dir) for role in ("train", "validation", "test")}
    tok = vocabulary(out_dir, splits["train"][0])
    encoded = {role: tok.encode_batch(texts, INPUT_LENGTH) for role, (texts, _) in splits.items()}
    start, cpu_start = time.perf_counter(), time.process_time()
    tree, steps, final_loss = train_t5_params(recipe, encoded["train"], splits["train"][1], max_steps=max_steps)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    test_labels = splits["test"][1]
    test = card_metrics(test_labels, predict_log_probs(recipe.config, tree, encoded["test"]))
    paper = card_metrics(test_labels, predict_log_probs(recipe.config, tree, encoded["test"], readout="paper"))
    baseline = bag_of_words_baseline(splits["train"], splits["validation"], splits["test"])
    ckpt = out_dir / name
    write_t5x_checkpoint(ckpt, tree, zarr=lambda key, a: key == "token_embedder/embedding" or "attention" in key,
                         step=steps)
    diff = test["accuracy"] - baseline["accuracy"]
    card = {
        "name": name,
        "description": recipe.description,
        "family": recipe.family,
        "config": recipe.config.to_dict(),
        "preprocess": PREPROCESS,
        "vocab": {"file": VOCAB_FILE, "sha256": fileio.sha256_file(out_dir / VOCAB_FILE), "pieces": tok.num_pieces,
                  "extra_ids": tok.extra_ids, "tokenizer_sha256": tok.sha256},
        "param_count": param_count(recipe.config),
        "flops_per_example": flops_per_example(recipe.config)["total"],
        "data": {"dataset": DATASET, "train_role": "train", "num_train": len(splits["train"][1]),
                 "test_role": "test", "num_test": len(test_labels), "classes": list(range(NUM_CLASSES))},
        "training": {**recipe.to_dict(), "steps": steps, "max_steps": max_steps, "wall_time_s": round(wall, 1),
                     "cpu_time_s": round(cpu, 1), "load_average": _load_average(), "final_loss": round(final_loss, 4),
                     "cpu_threads": _cpu_threads()},
        "test": {**test, "readout": "average", "paper_readout": paper},
        "baseline_bag_of_words": baseline,
        "accuracy_minus_baseline": diff,
        "versus_baseline": (f"{'beats' if diff > 0 else 'does not beat'} the bag-of-words baseline on test accuracy "
                            f"({test['accuracy']:.4f} vs {baseline['accuracy']:.4f}, {diff:+.4f})"),
        "checkpoint": {"directory": name, "format": "T5X", "sha256": directory_sha256(ckpt),
                       "bytes": directory_bytes(ckpt)},
        "provenance": provenance(),
    }
    del card["training"]["config"]
    fileio.write_json(out_dir / f"{name}.json", card)
    return card


def _load_average() -> float | None:
    """The 1-minute load average when training ended (the machine may be shared: wall time says
    little without it; cpu_time_s is this process's own CPU seconds)."""
    import os

    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


def _cpu_threads() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
