"""Decoding on a ground-truth world: a known linear "brain" on a random-weight AlexNet's features.

Images carry a planted category structure (berg.synthetic.category_images); "real" responses are the
brain's signal plus noise of known NCSNR; the "model" is a ridge regression fitted to the real training
responses, and its predictions for *new* images are the synthetic data. Decoders trained on synthetic
responses must classify real responses to unseen images, and identify unseen categories, above chance;
shuffled labels must give chance and non-significant p-values.
"""

from __future__ import annotations

import numpy as np
import pytest

from berg.errors import InvalidParameterError
from berg.experiments.decoding import (
    classify,
    identify,
    learning_curve,
    permutation_p_value,
    split_categories,
    split_images,
)
from berg.synthetic import LinearBrain, add_noise, category_images
from berg.testing import image_recipe

N_CAT, N_REAL, N_SYN = 30, 8, 16
RECIPE = image_recipe(
    {"builder": "torchvision.models.alexnet", "weights": "AlexNet_Weights.IMAGENET1K_V1"}, ["features.12"], size=64
)


@pytest.fixture(scope="module")
def world():
    from sklearn.linear_model import RidgeCV

    from berg.core.engine import iter_features
    from berg.features import FeatureExtractor
    from berg.stimuli import load_stimuli

    images, cats = category_images(N_CAT, N_REAL + N_SYN, size=64, prototype_weight=0.55, seed=3)
    ext = FeatureExtractor(RECIPE, backbone_weights="untrained", seed=0)
    feats = np.concatenate(list(iter_features(ext, load_stimuli(images, "image"), batch_size=128))).astype(np.float64)
    within = np.arange(len(cats)) % (N_REAL + N_SYN)
    real_rows, syn_rows = np.flatnonzero(within < N_REAL), np.flatnonzero(within >= N_REAL)
    brain = LinearBrain.from_features(feats[real_rows], 60, ncsnr=0.5, n_components=12, seed=1)
    real = brain.sample(feats[real_rows], 1, seed=2)[:, 0]  # single trials, like most BOLD5000 images
    rc = cats[real_rows]
    train, test = split_images(rc, test_fraction=0.25, seed=0)
    model = RidgeCV(alphas=np.logspace(0, 6, 7)).fit(feats[real_rows][train], real[train])
    # synthetic data = the model's predictions for new images plus noise (berg.synthetic's noise model):
    # noise-free predictions would let RidgeCV/logistic decoders pick far too little regularisation
    pred = model.predict(feats[syn_rows])
    synthetic = add_noise(pred, pred.std(axis=0, ddof=1) / 1.0, 1, seed=5)[:, 0]
    # "semantic" embedding of a category: its mean feature vector in a 16-PC space (a stand-in for a CLIP
    # text embedding: it is about the category's content, shared with what drives the brain)
    z = (feats - feats.mean(0)) / (feats.std(0) + 1e-9)
    _, _, vt = np.linalg.svd(z[real_rows], full_matrices=False)
    pcs = z @ vt[:16].T
    emb = {c: pcs[cats == c].mean(0) for c in np.unique(cats)}
    return dict(
        real=real,
        real_cats=rc,
        train=train,
        test=test,
        synthetic=synthetic,
        syn_cats=cats[syn_rows],
        emb=emb,
        brain=brain,
        feats=feats,
        real_rows=real_rows,
    )


def test_splits():
    cats = np.repeat(list("abcdef"), 10)
    tr, te = split_images(cats, test_fraction=0.3, seed=1)
    assert not set(tr) & set(te) and len(tr) + len(te) == 60
    assert set(cats[te]) == set(cats[tr]) == set("abcdef")
    tr, te = split_categories(cats, n_test_categories=2, seed=1)
    assert not set(cats[tr]) & set(cats[te]) and len(set(cats[te])) == 2
    tr, te = split_categories(cats, test_categories=["a"])
    assert set(cats[te]) == {"a"}
    with pytest.raises(InvalidParameterError, match="cannot hold out"):
        split_categories(cats, n_test_categories=6)
    with pytest.raises(InvalidParameterError, match=">= 2 per category"):
        split_images(["a", "b", "b"])


def test_synthetic_to_real_classification_above_chance(world):
    w = world
    test_x, test_y = w["real"][w["test"]], w["real_cats"][w["test"]]
    syn = classify(w["synthetic"], w["syn_cats"], test_x, test_y, n_permutations=500, seed=0)
    assert syn.chance == pytest.approx(1 / N_CAT)
    assert syn.accuracy > 2.5 * syn.chance and syn.p_value < 0.01
    assert abs(syn.null_mean - syn.chance) < 0.03
    real = classify(w["real"][w["train"]], w["real_cats"][w["train"]], test_x, test_y, n_permutations=200)
    assert real.accuracy > 1.5 * real.chance and real.p_value < 0.05
    svm = classify(w["synthetic"], w["syn_cats"], test_x, test_y, classifier="svm", C=0.01, n_permutations=200)
    assert svm.accuracy > 2 * svm.chance and svm.p_value < 0.01
    # standardising on the training data only also transfers here (same units), just as a check of the option
    tr = classify(w["synthetic"], w["syn_cats"], test_x, test_y, standardize="train", n_permutations=100)
    assert tr.accuracy > 1.5 * tr.chance


def test_shuffled_labels_give_chance_and_non_significant_p(world):
    w = world
    test_x, test_y = w["real"][w["test"]], w["real_cats"][w["test"]]
    rng = np.random.default_rng(0)
    results = [
        classify(w["synthetic"], rng.permutation(w["syn_cats"]), test_x, test_y, n_permutations=200, seed=s)
        for s in range(8)
    ]
    accs = np.array([r.accuracy for r in results])
    assert abs(accs.mean() - 1 / N_CAT) < 0.04
    assert sum(r.p_value < 0.05 for r in results) <= 1
    # the full-pipeline permutation (refit on shuffled training labels) agrees on the real decoder
    full = classify(w["synthetic"], w["syn_cats"], test_x, test_y, n_permutations=19, permute="train")
    assert full.p_value == pytest.approx(1 / 20) and full.permute == "train"


def test_unseen_categories_identified_above_chance(world):
    w = world
    allx = np.concatenate([w["synthetic"], w["real"]])
    ally = np.concatenate([w["syn_cats"], w["real_cats"]])
    is_real = np.r_[np.zeros(len(w["synthetic"]), bool), np.ones(len(w["real"]), bool)]
    held = [f"cat{c:02d}" for c in range(0, N_CAT, 4)]
    tr, te = split_categories(ally, test_categories=held)
    train = tr[~is_real[tr]]  # train on synthetic responses to the seen categories
    test = te[is_real[te]]  # test on real responses to the unseen ones
    assert not set(ally[train]) & set(held)
    res = identify(allx[train], ally[train], allx[test], ally[test], w["emb"], n_way=2, n_permutations=500)
    assert res.kind == "identification" and res.chance == 0.5
    assert res.accuracy > 0.6 and res.p_value < 0.01
    top1 = identify(allx[train], ally[train], allx[test], ally[test], w["emb"], n_permutations=300)
    assert top1.n_way == len(held) and top1.accuracy > 2 / len(held) and top1.p_value < 0.01
    shuffled = identify(
        allx[train],
        np.random.default_rng(1).permutation(ally[train]),
        allx[test],
        ally[test],
        w["emb"],
        n_way=2,
        n_permutations=300,
    )
    assert abs(shuffled.accuracy - 0.5) < 0.12
    with pytest.raises(InvalidParameterError, match="embeddings lack"):
        identify(allx[train], ally[train], allx[test], ally[test], {"cat01": np.ones(16)})
    with pytest.raises(InvalidParameterError, match="n_way"):
        identify(allx[train], ally[train], allx[test], ally[test], w["emb"], n_way=9)


@pytest.mark.filterwarnings("ignore:The number of unique classes")
def test_learning_curve_grows_with_synthetic_data(world):
    w = world
    test_x, test_y = w["real"][w["test"]], w["real_cats"][w["test"]]
    curve = learning_curve(
        w["synthetic"],
        w["syn_cats"],
        test_x,
        test_y,
        sizes=[30, 90, 480],
        n_draws=3,
        real_x=w["real"][w["train"]],
        real_y=w["real_cats"][w["train"]],
        n_permutations=200,
    )
    assert list(curve.sizes) == [30, 90, 480] and curve.chance == pytest.approx(1 / N_CAT)
    assert curve.accuracy[-1] > curve.accuracy[0] + 0.05
    assert curve.p_value[-1] < 0.01
    assert curve.real_sizes[-1] == len(w["train"]) and len(curve.real_accuracy) == len(curve.real_sizes)
    assert curve.real_accuracy[-1] > 2 * curve.chance and curve.real_p_value[-1] < 0.01
    fig = curve.plot()
    assert fig.axes
    with pytest.raises(InvalidParameterError, match="at most the synthetic pool"):
        learning_curve(w["synthetic"], w["syn_cats"], test_x, test_y, sizes=[10**6])


def test_validation_messages(world):
    w = world
    with pytest.raises(InvalidParameterError, match="valid: \\['logistic', 'svm'\\]"):
        classify(w["synthetic"], w["syn_cats"], w["real"], w["real_cats"], classifier="lda")
    with pytest.raises(InvalidParameterError, match="never occur in training"):
        classify(w["synthetic"][:50], np.repeat(["a", "b"], 25), w["real"][:5], ["c"] * 5)
    with pytest.raises(InvalidParameterError, match="same outputs"):
        classify(w["synthetic"][:, :5], w["syn_cats"], w["real"], w["real_cats"])
    assert permutation_p_value(0.9, np.array([0.1, 0.95])) == pytest.approx(2 / 3)
