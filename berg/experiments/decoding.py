"""Decoding brain responses: classifiers and semantic-embedding decoders, trained on synthetic or real data.

The study of Delavari, Sigal & Oruc (2025): linear classifiers trained on *synthetic* responses (a
model's in silico responses, :mod:`berg.synthetic`) classify *real* responses to unseen images, and a
decoder that predicts a semantic embedding of the category identifies even unseen categories.

* :func:`split_images` holds out images (every category on both sides); :func:`split_categories`
  holds out whole categories.
* :func:`classify`: scikit-learn logistic regression or linear SVM, with standardisation.
* :func:`identify`: ridge regression from responses to the embedding of each stimulus' category
  (a CLIP text embedding of the category name, or any table the user gives), then n-way
  identification among candidate categories.
* :func:`learning_curve`: accuracy against the number of (synthetic) training stimuli, with the
  decoder trained on the available real data as the reference.
* Every accuracy has its chance level and a permutation p-value: labels shuffled ``n_permutations``
  times (seeded), ``p = (1 + #{null >= observed}) / (1 + n_permutations)`` (Phipson & Smyth 2010).
  ``permute="test"`` (default) shuffles the test labels against fixed predictions (cheap: tests the
  trained decoder); ``permute="train"`` refits on shuffled training labels each time (tests the whole
  pipeline, as :func:`sklearn.model_selection.permutation_test_score` does; slow).

Standardisation ``"each"`` (default) z-scores training and test responses each with their own
per-output mean and SD: synthetic and real responses differ in scale and offset (predictions are
shrunk), and this removes that shift without using any test label. ``"train"`` fits the scaler on
the training responses only (the usual within-dataset pipeline); ``"none"`` leaves them as they are.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from berg.errors import InvalidParameterError, close_matches

__all__ = [
    "CLASSIFIERS",
    "DecodingResult",
    "LearningCurve",
    "split_images",
    "split_categories",
    "classify",
    "identify",
    "learning_curve",
    "permutation_p_value",
]

CLASSIFIERS = ("logistic", "svm")
STANDARDIZE = ("each", "train", "none")
PERMUTE = ("test", "train")


@dataclass
class DecodingResult:
    """An accuracy with its chance level and permutation test.

    Attributes
    ----------
    accuracy : float
    chance : float
        ``1 / n_classes`` (classification) or ``1 / n_way`` (identification).
    p_value : float
        Permutation p-value (``nan`` with 0 permutations).
    null : (n_permutations,) array
        Accuracies with shuffled labels.
    kind : {"classification", "identification"}
    predictions : (n_test,) array
        Predicted labels (identification: the best-matching candidate).
    labels : (n_test,) array
        True test labels.
    classes : (n_classes,) array
        Training classes (classification) or candidate categories (identification).
    n_way : int or None
        Candidates per identification trial (``None`` for classification).
    n_train : int
    permute : str
    """

    accuracy: float
    chance: float
    p_value: float
    null: np.ndarray = field(repr=False)
    kind: str = "classification"
    predictions: np.ndarray = field(default=None, repr=False)
    labels: np.ndarray = field(default=None, repr=False)
    classes: np.ndarray = field(default=None, repr=False)
    n_way: int | None = None
    n_train: int = 0
    permute: str = "test"

    @property
    def n_test(self) -> int:
        """Number of test stimuli."""
        return int(len(self.labels))

    @property
    def null_mean(self) -> float:
        """Mean accuracy under shuffled labels (the empirical chance level)."""
        return float(np.mean(self.null)) if len(self.null) else float("nan")

    @property
    def significant(self) -> bool:
        """``p_value < 0.05``."""
        return bool(self.p_value < 0.05)


def permutation_p_value(observed: float, null: np.ndarray) -> float:
    """``(1 + #{null >= observed}) / (1 + len(null))`` (never 0; Phipson & Smyth 2010)."""
    null = np.asarray(null, dtype=np.float64)
    if null.size == 0:
        return float("nan")
    return float((1 + np.sum(null >= observed - 1e-12)) / (1 + null.size))


# ------------------------------------------------------------------------------------------ splits


def split_images(
    categories: Sequence[Any], *, test_fraction: float = 0.2, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Hold out images, stratified by category (each category keeps >= 1 image on each side).

    Returns
    -------
    train_idx, test_idx : int arrays (sorted)
    """
    cats = np.asarray(categories)
    if not 0 < test_fraction < 1:
        raise InvalidParameterError(f"test_fraction must be in (0, 1), got {test_fraction}")
    rng = np.random.default_rng(seed)
    test = []
    for c in np.unique(cats):
        idx = np.flatnonzero(cats == c)
        if idx.size < 2:
            raise InvalidParameterError(f"category {c!r} has {idx.size} image; an image split needs >= 2 per category")
        k = min(idx.size - 1, max(1, int(round(test_fraction * idx.size))))
        test.extend(rng.choice(idx, size=k, replace=False).tolist())
    test_idx = np.sort(np.asarray(test, dtype=np.int64))
    return np.setdiff1d(np.arange(len(cats)), test_idx), test_idx


def split_categories(
    categories: Sequence[Any],
    *,
    n_test_categories: int | None = None,
    test_fraction: float = 0.2,
    test_categories: Sequence[Any] | None = None,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Hold out whole categories: no test category has a training image.

    Parameters
    ----------
    n_test_categories : int, optional
        Number of categories held out (default: ``test_fraction`` of them, at least 2).
    test_categories : sequence, optional
        The held-out categories, explicitly.

    Returns
    -------
    train_idx, test_idx : int arrays (sorted)
    """
    cats = np.asarray(categories)
    unique = np.unique(cats)
    if test_categories is not None:
        held = np.asarray(test_categories)
        unknown = sorted(set(held.tolist()) - set(unique.tolist()))
        if unknown:
            raise InvalidParameterError(f"test categories {unknown} do not occur; categories: {unique.tolist()}")
    else:
        k = n_test_categories if n_test_categories is not None else max(2, int(round(test_fraction * unique.size)))
        if not 1 <= k < unique.size:
            raise InvalidParameterError(
                f"cannot hold out {k} of {unique.size} categories (need 1 <= k < {unique.size})"
            )
        held = np.random.default_rng(seed).choice(unique, size=k, replace=False)
    test = np.isin(cats, held)
    return np.flatnonzero(~test), np.flatnonzero(test)


# ------------------------------------------------------------------------------------- internals


def _as_2d(x: Any, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 3:  # (n, repeats, outputs): decode the mean over available repeats
        with np.errstate(invalid="ignore"):
            x = np.nanmean(x, axis=1)
    if x.ndim != 2:
        raise InvalidParameterError(
            f"{name} must be (n_stimuli, n_outputs) or (n_stimuli, n_repeats, n_outputs), got {x.shape}"
        )
    if not np.all(np.isfinite(x)):
        raise InvalidParameterError(f"{name} has NaN or infinite values (a stimulus without any repeat?)")
    return x


def _zscore(x: np.ndarray) -> np.ndarray:
    sd = x.std(axis=0)
    return (x - x.mean(axis=0)) / np.where(sd > 0, sd, 1.0)


def _check_choice(name: str, value: str, valid: Sequence[str]) -> None:
    if value not in valid:
        hint = close_matches(str(value), valid)
        raise InvalidParameterError(
            f"{name}={value!r} unknown; valid: {list(valid)}" + (f" (did you mean {hint[0]!r}?)" if hint else "")
        )


def _prepare(train_x, test_x, standardize: str) -> tuple[np.ndarray, np.ndarray]:
    _check_choice("standardize", standardize, STANDARDIZE)
    a, b = _as_2d(train_x, "train_x"), _as_2d(test_x, "test_x")
    if a.shape[1] != b.shape[1]:
        raise InvalidParameterError(
            f"train_x has {a.shape[1]} outputs and test_x {b.shape[1]}; they must be the same outputs"
        )
    if standardize == "each":
        return _zscore(a), _zscore(b)
    if standardize == "train":
        mu, sd = a.mean(axis=0), a.std(axis=0)
        sd = np.where(sd > 0, sd, 1.0)
        return (a - mu) / sd, (b - mu) / sd
    return a, b


def _classifier(classifier: str, C: float, max_iter: int, seed: int):
    _check_choice("classifier", classifier, CLASSIFIERS)
    if classifier == "logistic":
        from sklearn.linear_model import LogisticRegression

        return LogisticRegression(C=C, max_iter=max_iter)
    from sklearn.svm import LinearSVC

    return LinearSVC(C=C, max_iter=max_iter, random_state=seed)


def _labels(y: Any, n: int, name: str) -> np.ndarray:
    y = np.asarray(y)
    if y.shape != (n,):
        raise InvalidParameterError(f"{name} must have one label per stimulus ({n}), got shape {y.shape}")
    return y


def _perms(n_permutations: int, n: int, seed: int) -> list[np.ndarray]:
    if n_permutations < 0:
        raise InvalidParameterError(f"n_permutations must be >= 0, got {n_permutations}")
    rng = np.random.default_rng([int(seed), 7919])  # its own stream: independent of fitting seeds
    return [rng.permutation(n) for _ in range(n_permutations)]


# --------------------------------------------------------------------------------- classification


def classify(
    train_x: Any,
    train_y: Sequence[Any],
    test_x: Any,
    test_y: Sequence[Any],
    *,
    classifier: str = "logistic",
    C: float = 1.0,
    standardize: str = "each",
    n_permutations: int = 1000,
    permute: str = "test",
    seed: int = 0,
    max_iter: int = 2000,
) -> DecodingResult:
    """Train a linear classifier and score it on held-out responses.

    Parameters
    ----------
    train_x, test_x : (n, n_outputs) or (n, n_repeats, n_outputs) arrays
        Responses (3-D: the mean over repeats is decoded). Same outputs on both sides, e.g. synthetic
        responses for training and real responses for testing.
    train_y, test_y : sequences of labels
        Test labels must be among the training classes (use :func:`identify` for unseen categories).
    classifier : {"logistic", "svm"}
        :class:`sklearn.linear_model.LogisticRegression` or :class:`sklearn.svm.LinearSVC`.
    C : float
        Inverse regularisation strength.
    standardize : {"each", "train", "none"}
        See the module docstring.
    n_permutations : int
    permute : {"test", "train"}
    seed : int

    Returns
    -------
    DecodingResult
    """
    _check_choice("permute", permute, PERMUTE)
    a, b = _prepare(train_x, test_x, standardize)
    ya, yb = _labels(train_y, len(a), "train_y"), _labels(test_y, len(b), "test_y")
    classes = np.unique(ya)
    if classes.size < 2:
        raise InvalidParameterError("the training labels have a single class; need >= 2")
    unseen = sorted(set(yb.tolist()) - set(classes.tolist()))
    if unseen:
        raise InvalidParameterError(
            f"test labels {unseen[:5]} never occur in training; hold out images, not "
            "categories, for classification, or use identify() with an embedding table"
        )
    clf = _classifier(classifier, C, max_iter, seed).fit(a, ya)
    pred = clf.predict(b)
    acc = float(np.mean(pred == yb))
    perms = _perms(n_permutations, len(ya) if permute == "train" else len(yb), seed)
    if permute == "test":
        null = np.array([np.mean(pred == yb[p]) for p in perms])
    else:
        null = np.array(
            [np.mean(_classifier(classifier, C, max_iter, seed).fit(a, ya[p]).predict(b) == yb) for p in perms]
        )
    return DecodingResult(
        acc,
        1.0 / classes.size,
        permutation_p_value(acc, null),
        null,
        "classification",
        pred,
        yb,
        classes,
        None,
        len(ya),
        permute,
    )


# --------------------------------------------------------------------------------- identification


def _embedding_table(embeddings: Any) -> tuple[list[str], np.ndarray]:
    if isinstance(embeddings, Mapping):
        names = [str(k) for k in embeddings]
        table = np.stack([np.asarray(v, dtype=np.float64).ravel() for v in embeddings.values()])
    else:
        names, table = embeddings  # (names, (n, d) array)
        names, table = [str(n) for n in names], np.asarray(table, dtype=np.float64)
    if table.ndim != 2 or len(names) != table.shape[0]:
        raise InvalidParameterError("embeddings must be {category: vector} or (names, (n_categories, dim) array)")
    return names, table


def _rowz(x: np.ndarray) -> np.ndarray:
    x = x - x.mean(axis=1, keepdims=True)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _n_way_accuracy(ranks_of_true: np.ndarray, n_candidates: int, n_way: int) -> float:
    """Mean over trials of P(true beats n_way-1 random distractors) = C(r, n-1) / C(N-1, n-1), exactly."""
    from scipy.special import comb

    return float(np.mean(comb(ranks_of_true, n_way - 1) / comb(n_candidates - 1, n_way - 1)))


def identify(
    train_x: Any,
    train_y: Sequence[Any],
    test_x: Any,
    test_y: Sequence[Any],
    embeddings: Any,
    *,
    candidates: Sequence[Any] | None = None,
    n_way: int | None = None,
    alphas: Sequence[float] | None = None,
    standardize: str = "each",
    n_permutations: int = 1000,
    seed: int = 0,
) -> DecodingResult:
    """Semantic-embedding decoder with n-way identification (works for categories never trained on).

    A ridge regression (:class:`sklearn.linear_model.RidgeCV`, alpha per embedding dimension chosen
    by efficient leave-one-out) maps responses to the embedding of each training stimulus' category.
    A test response's predicted embedding is compared (Pearson r) with every candidate category's
    embedding; with ``n_way = n`` the accuracy is the probability that the true category beats
    ``n - 1`` distractors drawn at random from the other candidates, averaged exactly over all
    distractor sets (``n_way=None``: top-1 among all candidates; chance ``1 / n_way``).

    Parameters
    ----------
    train_x, test_x : arrays as in :func:`classify`
    train_y, test_y : category labels
    embeddings : {category: (dim,) vector} or (names, (n_categories, dim) array)
        E.g. CLIP text embeddings of the category names; must cover every train and candidate label.
    candidates : sequence, optional
        Candidate categories of the identification (default: the distinct test labels, e.g. the
        held-out categories).
    n_way : int, optional
        2 <= n_way <= number of candidates (default: all candidates).
    alphas : sequence of float, optional
        Ridge penalties to choose from (default ``logspace(-2, 5, 8)``).
    standardize : {"each", "train", "none"}
    n_permutations, seed : int
        Test labels are shuffled against the fixed predicted embeddings.

    Returns
    -------
    DecodingResult
        ``kind="identification"``; ``predictions`` are the top-1 candidates.
    """
    from sklearn.linear_model import RidgeCV

    a, b = _prepare(train_x, test_x, standardize)
    ya = _labels(train_y, len(a), "train_y").astype(str)
    yb = _labels(test_y, len(b), "test_y").astype(str)
    names, table = _embedding_table(embeddings)
    row = {n: i for i, n in enumerate(names)}
    cands = np.unique(yb) if candidates is None else np.asarray(candidates).astype(str)
    missing = sorted({c for c in (*ya.tolist(), *cands.tolist()) if c not in row})
    if missing:
        raise InvalidParameterError(f"embeddings lack categories {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    not_candidate = sorted(set(yb.tolist()) - set(cands.tolist()))
    if not_candidate:
        raise InvalidParameterError(f"test labels {not_candidate[:5]} are not among the candidates")
    n_c = cands.size
    n_way = n_c if n_way is None else int(n_way)
    if not 2 <= n_way <= n_c:
        raise InvalidParameterError(f"n_way must be in 2..{n_c} (the number of candidates), got {n_way}")
    target = table[[row[c] for c in ya]]
    reg = RidgeCV(alphas=np.asarray(alphas if alphas is not None else np.logspace(-2, 5, 8)), alpha_per_target=True)
    reg.fit(a, target)
    sim = _rowz(reg.predict(b)) @ _rowz(table[[row[c] for c in cands]]).T  # (n_test, n_candidates) Pearson r
    ranks = np.argsort(np.argsort(sim, axis=1), axis=1)  # 0 = least similar candidate
    pos = {c: i for i, c in enumerate(cands)}
    truth = np.array([pos[c] for c in yb])
    rows = np.arange(len(yb))
    acc = _n_way_accuracy(ranks[rows, truth], n_c, n_way)
    null = np.array([_n_way_accuracy(ranks[rows, truth[p]], n_c, n_way) for p in _perms(n_permutations, len(yb), seed)])
    return DecodingResult(
        acc,
        1.0 / n_way,
        permutation_p_value(acc, null),
        null,
        "identification",
        cands[np.argmax(sim, axis=1)],
        yb,
        cands,
        n_way,
        len(ya),
        "test",
    )


# --------------------------------------------------------------------------------- learning curves


@dataclass
class LearningCurve:
    """Accuracy against the number of training stimuli, for synthetic and (optionally) real training data.

    Attributes
    ----------
    sizes : (k,) int array
        Numbers of synthetic training stimuli.
    accuracy, accuracy_sd, p_value : (k,) arrays
        Mean and SD over ``n_draws`` random subsets, and the permutation p-value of the mean.
    real_sizes, real_accuracy, real_accuracy_sd, real_p_value : arrays
        The same for the real training data (sizes up to its count; empty if none was given).
    chance : float
    """

    sizes: np.ndarray
    accuracy: np.ndarray
    accuracy_sd: np.ndarray
    p_value: np.ndarray
    real_sizes: np.ndarray
    real_accuracy: np.ndarray
    real_accuracy_sd: np.ndarray
    real_p_value: np.ndarray
    chance: float

    def plot(self, *, ax: Any = None, title: str = ""):
        """Accuracy vs training-set size (log x), with chance; returns the matplotlib figure."""
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(4.5, 3.2)) if ax is None else (ax.figure, ax)
        ax.errorbar(self.sizes, self.accuracy, yerr=self.accuracy_sd, marker="o", label="trained on synthetic")
        if len(self.real_sizes):
            ax.errorbar(
                self.real_sizes, self.real_accuracy, yerr=self.real_accuracy_sd, marker="s", label="trained on real"
            )
        ax.axhline(self.chance, color="k", ls="--", lw=0.8, label="chance")
        ax.set_xscale("log")
        ax.set_xlabel("training stimuli")
        ax.set_ylabel("test accuracy (real data)")
        ax.legend(frameon=False, fontsize=8)
        ax.set_title(title)
        fig.tight_layout()
        return fig


def _curve(x, y, test_x, test_y, sizes, *, n_draws, classifier, C, standardize, perms, seed, max_iter):
    accs, sds, ps = [], [], []
    rng = np.random.default_rng([int(seed), 104729])
    for size in sizes:
        preds = []
        for _ in range(n_draws):
            idx = _stratified_subset(y, int(size), rng)
            a, b = _prepare(x[idx], test_x, standardize)
            preds.append(_classifier(classifier, C, max_iter, seed).fit(a, y[idx]).predict(b))
        preds = np.stack(preds)
        per_draw = (preds == test_y).mean(axis=1)
        null = np.array([(preds == test_y[p]).mean() for p in perms])  # mean over draws, same shuffle for all
        accs.append(per_draw.mean())
        sds.append(per_draw.std(ddof=1) if n_draws > 1 else 0.0)
        ps.append(permutation_p_value(per_draw.mean(), null))
    return np.array(accs), np.array(sds), np.array(ps)


def _stratified_subset(y: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """``size`` rows with every class present at least once (then uniformly at random)."""
    classes = np.unique(y)
    if size < classes.size:
        raise InvalidParameterError(f"a training set of {size} cannot hold all {classes.size} classes")
    first = np.array([rng.choice(np.flatnonzero(y == c)) for c in classes])
    rest = rng.choice(np.setdiff1d(np.arange(len(y)), first), size=size - classes.size, replace=False)
    return np.concatenate([first, rest])


def learning_curve(
    synthetic_x: Any,
    synthetic_y: Sequence[Any],
    test_x: Any,
    test_y: Sequence[Any],
    *,
    sizes: Sequence[int],
    real_x: Any = None,
    real_y: Sequence[Any] | None = None,
    n_draws: int = 3,
    classifier: str = "logistic",
    C: float = 1.0,
    standardize: str = "each",
    n_permutations: int = 1000,
    seed: int = 0,
    max_iter: int = 2000,
) -> LearningCurve:
    """Test accuracy on real responses vs the number of synthetic training stimuli (and of real ones).

    Parameters
    ----------
    synthetic_x, synthetic_y : training pool of synthetic responses and their labels
    test_x, test_y : real test responses (images never in any training set) and labels
    sizes : sequence of int
        Training-set sizes drawn (stratified, without replacement) from the synthetic pool.
    real_x, real_y : optional real training data (the reference); its curve uses the sizes up to its
        count, plus its full size.
    n_draws : int
        Random subsets per size (mean and SD reported).
    classifier, C, standardize, n_permutations, seed, max_iter
        As in :func:`classify`; the p-value tests the mean accuracy over draws (test labels shuffled
        identically for every draw).

    Returns
    -------
    LearningCurve
    """
    sx = _as_2d(synthetic_x, "synthetic_x")
    sy = _labels(synthetic_y, len(sx), "synthetic_y")
    tx = _as_2d(test_x, "test_x")
    ty = _labels(test_y, len(tx), "test_y")
    sizes = np.asarray(sorted({int(s) for s in sizes}), dtype=np.int64)
    if sizes.size == 0 or sizes[-1] > len(sx):
        raise InvalidParameterError(
            f"sizes must be non-empty and at most the synthetic pool ({len(sx)}); got {sizes.tolist()}"
        )
    if n_draws < 1:
        raise InvalidParameterError(f"n_draws must be >= 1, got {n_draws}")
    perms = _perms(n_permutations, len(ty), seed)
    kw = dict(
        n_draws=n_draws, classifier=classifier, C=C, standardize=standardize, perms=perms, seed=seed, max_iter=max_iter
    )
    acc, sd, p = _curve(sx, sy, tx, ty, sizes, **kw)
    empty = np.array([])
    r_sizes, r_acc, r_sd, r_p = np.array([], dtype=np.int64), empty, empty, empty
    if real_x is not None:
        rx = _as_2d(real_x, "real_x")
        ry = _labels(real_y, len(rx), "real_y")
        r_sizes = np.asarray(sorted({int(s) for s in sizes if s < len(rx)} | {len(rx)}), dtype=np.int64)
        r_acc, r_sd, r_p = _curve(rx, ry, tx, ty, r_sizes, **kw)
    return LearningCurve(sizes, acc, sd, p, r_sizes, r_acc, r_sd, r_p, 1.0 / np.unique(sy).size)
