"""The active-learning protocol of the Plex runs (spec §6) on the training layer.

One curve = one (acquisition, seed). With budgets (initial, max, batch) the labelled sizes are
initial, initial + batch, ..., up to max. Round r (labelled set L_r):

1. adapt: a `Learner` fits a model on L_r from scratch:
   - `FinetuneLearner` (mode `finetune`, Plex): the pretrained parameters with a fresh zero head
     (plexbench.training.model), fresh optimiser state, the whole model fine-tuned by
     plexbench.training.finetune (SGD momentum 0.9, constant LR, clip 1.0, batch 512 drawn from
     L_r repeated and shuffled, validation accuracy every 5 steps, keep the best with ties to the
     later step, patience 128, at most 2000 steps: all `FinetuneConfig` fields);
   - `ProbeLearner` (mode `probe`): per ensemble member a logistic probe on frozen pre-logits
     (plexbench.training.probe, standardised with L_r's statistics) for every l2 of a grid; the
     l2 with the best validation accuracy is kept (ties: the smaller l2);
2. record the kept model's TEST accuracy, NLL and ECE at x = |L_r|;
3. unless |L_r| + batch > max: score the unlabelled pool (plexbench.training.acquisition; labelled
   rows -inf) and add the selected `batch` rows: L_{r+1} = L_r followed by them.

Randomness, all from the seed: the initial set permutes the pool with default_rng(seed); round r's
uniform scores and power-selection noise come from default_rng([seed, r, 1]); the fine-tuning
sampler from seed default_rng([seed, r, 2]).integers(2**31) and the model's noise key from
default_rng([seed, r, 3]).integers(2**31). So a round is a function of (seed, r, L_r) alone.

Resumability: `run_curve` calls `save(state)` after every round with the curve's whole state
(labelled rows in order, the per-round records); started again with that state it continues
at the next round, and since rounds depend on nothing else the finished curve equals an
uninterrupted run's exactly.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Protocol

import numpy as np

from plexbench.errors import PlexbenchError
from plexbench.training import acquisition as A


@dataclass(frozen=True)
class Budget:
    """Labelled-set sizes: `initial`, then + `batch` per round while <= `max` (spec §6 budgets)."""

    initial: int
    max: int
    batch: int

    def sizes(self) -> list[int]:
        """The labelled sizes of the rounds.

        >>> Budget(20, 35, 5).sizes()
        [20, 25, 30, 35]
        """
        return list(range(self.initial, self.max + 1, self.batch))


def round_seed(seed: int, round_index: int, purpose: int) -> int:
    """A 31-bit seed for one purpose (2 sampler, 3 model noise) of one round."""
    return int(np.random.default_rng([seed, round_index, purpose]).integers(2**31))


def round_rng(seed: int, round_index: int) -> np.random.Generator:
    """The round's generator of uniform scores and power-selection noise."""
    return np.random.default_rng([seed, round_index, 1])


# ----------------------------------------------------------------------------- learners


class Fitted(Protocol):
    """A model fitted in one round."""

    info: dict

    def test_metrics(self) -> dict[str, float]:
        """accuracy, nll, ece on the test split."""

    def pool_outputs(self) -> tuple[np.ndarray, np.ndarray | None]:
        """(member probabilities (E, N, K), pool embeddings (E, N, D) or None) for every pool row."""


class Learner(Protocol):
    num_members: int

    def fit(self, rows: np.ndarray, seed: int, round_index: int) -> Fitted:
        """A model fitted on pool rows `rows` (their labels are the pool's)."""


@dataclass
class FrozenSplit:
    """Frozen embeddings (E, N, D) and labels (N,) of one split (probe mode)."""

    embeddings: np.ndarray
    labels: np.ndarray


class ProbeLearner:
    """Mode `probe` (module docstring): logistic probes per member on frozen pre-logits."""

    def __init__(self, pool: FrozenSplit, validation: FrozenSplit, test: FrozenSplit, num_classes: int,
                 l2s, max_iter: int = 150):
        self.pool, self.validation, self.test = pool, validation, test
        self.num_classes, self.l2s, self.max_iter = int(num_classes), np.asarray(l2s, np.float64), max_iter
        self.num_members = int(pool.embeddings.shape[0])

    def fit(self, rows: np.ndarray, seed: int, round_index: int) -> "_FittedProbe":
        from plexbench.training.probe import fit_probe

        probe = fit_probe(self.pool.embeddings[:, rows], self.pool.labels[rows], self.num_classes, self.l2s,
                          max_iter=self.max_iter)
        val = probe.predict(self.validation.embeddings)  # (L, N, K)
        val_acc = (val.argmax(axis=2) == self.validation.labels).mean(axis=1)
        best = int(np.argmax(val_acc))  # the first of equal accuracies: the smaller l2
        return _FittedProbe(self, probe, best, {"l2": float(self.l2s[best]), "validation_accuracy": float(val_acc[best])})


@dataclass
class _FittedProbe:
    learner: ProbeLearner
    probe: Any
    index: int
    info: dict

    def _member_probs(self, embeddings: np.ndarray) -> np.ndarray:
        z = self.probe.transform(embeddings)
        return np.stack([m.probabilities(zm) for m, zm in zip(self.probe.models[self.index], z)])

    def test_metrics(self) -> dict[str, float]:
        from plexbench.training.evaluate import ensemble_metrics

        probs = self._member_probs(self.learner.test.embeddings)
        return ensemble_metrics(self.learner.test.labels, np.log(np.maximum(probs, 1e-300)))

    def pool_outputs(self):
        return self._member_probs(self.learner.pool.embeddings), self.learner.pool.embeddings


class FinetuneLearner:
    """Mode `finetune` (module docstring): the whole pretrained model, fresh zero head each round.

    `model`: a plexbench.training.TrainableModel; `pool`, `validation`, `test`: EvalData of raw
    images with the preprocessing as `transform`; `config`: the FinetuneConfig (its seeds are
    replaced per round); `train_mc_samples`: heteroscedastic MC samples while training.
    """

    def __init__(self, model, pool, validation, test, num_classes: int, config, *,
                 train_mc_samples: int | None = None, eval_batch_size: int = 512):
        from plexbench.training.evaluate import Forward

        self.model, self.pool, self.validation, self.test = model, pool, validation, test
        self.num_classes, self.config = int(num_classes), config
        self.num_members = model.num_members
        self.train_apply = model.apply_fn(num_classes, num_mc_samples=train_mc_samples)
        self.forward = Forward(model.apply_fn(num_classes), batch_size=eval_batch_size)
        self._start: dict | None = None

    def start_params(self) -> dict:
        """Pretrained trunk + zero head: the same every round (computed once)."""
        if self._start is None:
            self._start = self.model.with_zero_head(self.num_classes)
        return self._start

    def validation_accuracy(self, params) -> float:
        from plexbench.training.evaluate import accuracy

        return accuracy(self.validation.labels, self.forward(params, self.validation)["logits"])

    def fit(self, rows: np.ndarray, seed: int, round_index: int) -> "_FittedFinetune":
        from plexbench.training.loop import TrainData, finetune

        config = dataclasses.replace(self.config, seed=round_seed(seed, round_index, 2),
                                     rng_seed=round_seed(seed, round_index, 3))
        # the labelled images preprocessed once per round (a batch of 512 drawn from 20 examples
        # would otherwise preprocess each of them 25 times per step)
        data = TrainData(self.pool.take(rows), self.pool.labels[rows])
        result = finetune(self.train_apply, self.start_params(), data, config, evaluate=self.validation_accuracy,
                          desc=f"fine-tune on {len(rows)} labels")
        info = {"steps": result.steps, "best_step": result.best_step, "validation_accuracy": result.best_metric,
                "stopped_early": result.stopped_early}
        return _FittedFinetune(self, result.params, info)


@dataclass
class _FittedFinetune:
    learner: FinetuneLearner
    params: Any
    info: dict

    def test_metrics(self) -> dict[str, float]:
        from plexbench.training.evaluate import ensemble_metrics

        out = self.learner.forward(self.params, self.learner.test)
        return ensemble_metrics(self.learner.test.labels, out["logits"])

    def pool_outputs(self):
        from plexbench.training.evaluate import member_probs

        out = self.learner.forward(self.params, self.learner.pool)
        return member_probs(out["logits"]), out["pre_logits"]


class SharedFirstRound:
    """A learner whose round-0 fits are shared between curves: round 0 of a seed sees the same
    initial set and the same round seeds whatever the acquisition, so its fit (and its test and
    pool outputs) is computed once per seed. Run a seed's curves one after another; the last
    seed's round 0 is kept."""

    def __init__(self, learner: Learner):
        self.learner, self.num_members = learner, learner.num_members
        self._kept: tuple | None = None

    def fit(self, rows: np.ndarray, seed: int, round_index: int) -> Fitted:
        if round_index:
            return _Memo(self.learner.fit(rows, seed, round_index))
        key = (seed, np.asarray(rows, np.int64).tobytes())
        if self._kept is None or self._kept[0] != key:
            self._kept = (key, _Memo(self.learner.fit(rows, seed, 0)))
        return self._kept[1]


class _Memo:
    """A fitted model whose test metrics and pool outputs are computed at most once."""

    def __init__(self, fitted: Fitted):
        self.fitted, self.info = fitted, fitted.info
        self._test = self._pool = None

    def test_metrics(self) -> dict[str, float]:
        if self._test is None:
            self._test = self.fitted.test_metrics()
        return self._test

    def pool_outputs(self):
        if self._pool is None:
            self._pool = self.fitted.pool_outputs()
        return self._pool


# ----------------------------------------------------------------------------- one curve


def run_curve(learner: Learner, pool_labels: np.ndarray, num_classes: int, budget: Budget, acquisition: str,
              seed: int, *, selection: str = "topk", state: dict | None = None,
              save: Callable[[dict], None] | None = None, on_round: Callable[[dict], None] | None = None) -> dict:
    """One (acquisition, seed) curve (module docstring). Returns the state
    {"labelled": [pool rows in acquisition order], "rounds": [{"labels", "accuracy", "nll", "ece",
    ...learner info}], "done": bool}; `state` resumes an unfinished one."""
    if acquisition not in A.ACQUISITIONS:
        raise PlexbenchError(f"unknown acquisition {acquisition!r} (choose from {', '.join(A.ACQUISITIONS)})")
    if acquisition == "bald" and learner.num_members < 2:
        raise PlexbenchError("bald needs an ensemble (E > 1)")
    sizes = budget.sizes()
    if state is None:
        state = {"labelled": A.initial_set(pool_labels, budget.initial, num_classes, seed).tolist(),
                 "rounds": [], "done": False}
    while not state["done"]:
        r = len(state["rounds"])
        rows = np.asarray(state["labelled"], np.int64)
        if rows.shape[0] != sizes[r]:
            raise PlexbenchError(f"active-learning state has {rows.shape[0]} labels in round {r}, expected {sizes[r]}")
        fitted = learner.fit(rows, seed, r)
        record = {"labels": int(rows.shape[0]), **fitted.test_metrics(), **fitted.info}
        if r + 1 < len(sizes):
            new = acquire(fitted, rows, pool_labels, acquisition, selection, sizes[r + 1] - sizes[r], round_rng(seed, r))
            state = {"labelled": state["labelled"] + new.tolist(), "rounds": state["rounds"] + [record], "done": False}
        else:
            state = {"labelled": state["labelled"], "rounds": state["rounds"] + [record], "done": True}
        if save is not None:
            save(state)
        if on_round is not None:
            on_round(record)
    return state


def acquire(fitted: Fitted, rows: np.ndarray, pool_labels: np.ndarray, acquisition: str, selection: str, k: int,
            rng: np.random.Generator) -> np.ndarray:
    """The `k` pool rows to label next (module docstring, step 3)."""
    probs, embeddings = fitted.pool_outputs()
    labelled_emb = None if embeddings is None else np.asarray(embeddings)[:, rows]
    if acquisition == "density" and embeddings is None:
        raise PlexbenchError("density acquisition needs pre-logits, which this model does not return")
    score = A.scores(acquisition, probs, rng=rng, pool_embeddings=embeddings, labelled_embeddings=labelled_emb,
                     labelled_labels=np.asarray(pool_labels)[rows])
    return A.select(A.mask_labelled(score, rows), k, method=selection, rng=rng)
