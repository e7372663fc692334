"""Synthetic berg models with known ground truth: registry entry + card + native artifact, in one call.

:func:`toy_model` writes everything a registered model needs under one folder and returns a
:class:`ToyModel` that knows the exact weights, so a test can compute what berg must return without
berg's engine (:meth:`ToyModel.predict`). Several calls on the same ``root`` add entries to the same
``registry.yaml``. Nothing here is brain data: the weights are random (or fitted by scikit-learn to
random responses) and the backbone is a seeded untrained network.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from berg.errors import InvalidParameterError
from berg.subjects import subject_label

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "SPACES",
    "READOUTS",
    "image_recipe",
    "resnet18_recipe",
    "synthetic_card",
    "add_registry_entry",
    "toy_model",
    "ToyModel",
    "ToyMLPModel",
    "reference_features",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SPACES = ("flat", "volume", "surface", "sensor_time")
READOUTS = ("random", "sklearn", "mlp")
RESNET18 = {"builder": "torchvision.models.resnet18", "weights": "ResNet18_Weights.IMAGENET1K_V1"}
RESNET18_WIDTHS = {"avgpool": 512}

# Default facts of each output space (small, so tests stay fast; every one can be overridden).
VOLUME_GRID = (6, 7, 5)
VOLUME_ROIS = {"A": slice(0, 10), "B": slice(5, 18)}  # overlapping on purpose
SURFACE_HEMIS = {"lh": 11, "rh": 9}
SURFACE_ROIS = {"V1": [0, 1, 2, 12, 13], "FFA": [5, 6, 15, 16, 17]}  # rows, lh first
CHANNELS = ("Fz", "Cz", "Pz", "Oz", "POz")
TIMES_MS = (-50.0, 0.0, 50.0, 100.0, 150.0, 200.0, 250.0)
N_REPS = 2
MLP_HIDDEN = 16
BUILT_TOY_ID = "test-toy-recipe"  # the model id build_toy_model writes its artifact for


def image_recipe(
    backbone: Mapping[str, Any],
    nodes: Sequence[str],
    *,
    size: int = 224,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> dict[str, Any]:
    """A feature recipe for still images: ``backbone``'s ``nodes`` on squashed ``size x size`` inputs.

    Parameters
    ----------
    backbone : mapping
        The recipe's ``backbone`` (``{"builder": "torchvision.models.alexnet", "weights": ...}``).
    nodes : sequence of str
        Backbone nodes whose flattened outputs are the features.
    size : int
        Square input size in pixels (images are squashed, not cropped).
    mean, std : sequence of float
        Per-channel normalisation (default ImageNet's).

    Returns
    -------
    dict
        ``backbone``, ``nodes`` and ``transform`` (a fresh copy each call).
    """
    return {
        "backbone": dict(backbone),
        "nodes": list(nodes),
        "transform": {
            "kind": "image",
            "size": [int(size), int(size)],
            "resize": "squash",
            "crop": None,
            "mean": list(mean),
            "std": list(std),
        },
    }


def resnet18_recipe(
    *,
    size: int = 224,
    nodes: Sequence[str] = ("avgpool",),
    projection: str = "none",
    readout: str = "linear",
    output_space: str = "flat",
) -> dict[str, Any]:
    """The torchvision ResNet-18 / ImageNet feature recipe of berg's synthetic models (written once).

    Parameters
    ----------
    size : int
        Square input size in pixels (images are squashed, not cropped).
    nodes : sequence of str
        Backbone nodes whose flattened outputs are the features (``avgpool``: 512 features).
    projection, readout, output_space : str
        The registry recipe's remaining keys (``projection`` is ``"none"`` or ``"scaler_pca"``).

    Returns
    -------
    dict
        A registry-style recipe (``backbone``, ``nodes``, ``transform``, ...), a fresh copy each call.
    """
    return {
        **image_recipe(RESNET18, nodes, size=size),
        "projection": projection,
        "readout": readout,
        "output_space": output_space,
    }


def synthetic_card(
    model_id: str,
    *,
    space: Mapping[str, Any],
    selection: Mapping[str, Any],
    subjects: Sequence[Any] = (1, 2),
    transform: Mapping[str, Any] | None = None,
    stimulus_kind: str = "image",
    creator: str = "berg.testing",
    options: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """A complete, schema-valid card for a synthetic model (its outputs mean nothing).

    Parameters
    ----------
    model_id : str
        The card's ``id`` (equal to the registry entry's id).
    space : mapping
        The output space (``{"kind": "surface", ...}``); sets the modality (``sensor_time``: EEG) and the
        output dimensions.
    selection : mapping
        ``parameters.selection`` (ROIs, ``n_outputs`` or ``lengths``, channels).
    subjects : sequence
        Subject ids.
    transform : mapping, optional
        The preprocessing transform (default: :func:`resnet18_recipe`'s).
    stimulus_kind : str
        ``"image"`` or ``"video"``.
    creator : str
        Who wrote the model (shown by ``berg describe``).
    options : sequence of mappings
        ``parameters.model_kwargs`` entries.

    Returns
    -------
    dict
        A card that :func:`berg.cards.validate_card` accepts.
    """
    kind = space["kind"]
    if kind not in SPACES:
        raise InvalidParameterError(f"space kind {kind!r} is not one of {', '.join(SPACES)}")
    dims = {
        "sensor_time": [
            {"name": "n_reps", "description": "repetitions"},
            {"name": "n_channels", "description": "channels"},
            {"name": "n_times", "description": "time points"},
        ],
        "surface": [{"name": "n_outputs", "description": "lh then rh vertices"}],
    }.get(kind, [{"name": "n_outputs", "description": "outputs"}])
    return {
        "id": model_id,
        "name": f"Synthetic model {model_id} (not a brain model)",
        "modality": "eeg" if kind == "sensor_time" else "fmri",
        "dataset": {"name": "synthetic", "space": kind, "citation": "none"},
        "species": "none (synthetic)",
        "stimuli": {"type": stimulus_kind, "description": f"random {stimulus_kind}s"},
        "model_type": "synthetic (seeded untrained backbone + random or fitted readout)",
        "creator": creator,
        "description": "A synthetic model written by berg.testing; its outputs mean nothing.",
        "input": {
            "type": stimulus_kind,
            "dtype": "uint8",
            "range": [0, 255],
            "shape": "[batch, H, W, 3]",
            "description": "RGB",
        },
        "output": {
            "dtype": "float32",
            "space": dict(space),
            "units": "arbitrary",
            "dims": [{"name": "n_stimuli", "description": "stimuli"}, *dims],
        },
        "parameters": {"subjects": list(subjects), "selection": dict(selection), "model_kwargs": list(options)},
        "preprocessing": {"transform": dict(transform or resnet18_recipe()["transform"])},
        "metadata": {"rois": "ROI indices"},
        "accuracy": {"split": "none", "summary": {}, "notes": "synthetic"},
        "references": [{"title": "berg.testing", "url": "https://example.invalid"}],
        "license": {"code": "MIT", "weights": "synthetic"},
        "provenance": {"weights": "synthetic", "artifact": creator},
        "caveats": ["synthetic: random weights, not a brain model"],
    }


def write_card(root: str | Path, card: Mapping[str, Any]) -> Path:
    """Write ``card`` to ``root/model_cards/<id>.yaml`` (where a registry in ``root`` looks for it)."""
    import yaml

    from berg.fsutil import atomic_write_text

    path = Path(root) / "model_cards" / f"{card['id']}.yaml"
    atomic_write_text(path, yaml.safe_dump(dict(card), sort_keys=False))
    return path


def add_registry_entry(registry: str | Path, model_id: str, entry: Mapping[str, Any]) -> Path:
    """Add one model to a registry file (created if absent); an id already there is refused.

    Parameters
    ----------
    registry : path
        The registry YAML (``format_version: 1``), usually ``root/registry.yaml``.
    model_id : str
        The new entry's id.
    entry : mapping
        The registry entry (``card``, ``modality``, ``dataset``, ``source``, ``layout``, ``recipe``, ...).

    Returns
    -------
    Path
        The registry file.
    """
    import yaml

    from berg.fsutil import atomic_write_text

    registry = Path(registry)
    doc = yaml.safe_load(registry.read_text()) if registry.is_file() else None
    doc = doc or {"format_version": 1, "models": {}}
    models = doc.setdefault("models", {})
    if model_id in models:
        raise InvalidParameterError(
            f"{registry} already registers {model_id!r}; pass another model_id or another root folder"
        )
    models[model_id] = dict(entry)
    atomic_write_text(registry, yaml.safe_dump(doc, sort_keys=False))
    return registry


def reference_features(images: Sequence[np.ndarray] | np.ndarray, *, size: int = 32, seed: int = 0) -> np.ndarray:
    """Seeded untrained ResNet-18 ``avgpool`` features computed with torchvision + PIL, not berg.

    The independent side of a parity test: :func:`resnet18_recipe` at ``size`` (squash resize,
    ImageNet normalisation) written out with torchvision's own transforms.

    Parameters
    ----------
    images : sequence of (H, W, 3) uint8 arrays
        RGB images.
    size : int
        The recipe's input size.
    seed : int
        Torch seed of the untrained weights (berg's ``backbone_weights="untrained"`` uses 0).

    Returns
    -------
    ndarray, shape (n_images, 512), float64
    """
    import torch
    import torchvision
    from PIL import Image
    from torchvision import transforms as T

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = torchvision.models.resnet18(weights=None)
    net.fc = torch.nn.Identity()
    net.eval()
    # torchvision's tensor pipeline (float pixels, antialiased resize), independent of berg's transforms
    prep = T.Compose([T.ToTensor(), T.Resize((size, size), antialias=True), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    x = torch.stack([prep(Image.fromarray(np.asarray(img))) for img in images])
    with torch.no_grad():
        return net(x).numpy().astype(np.float64)


def _space_facts(
    space: str, subjects: Sequence[Any], n_outputs: int | Mapping[Any, int] | None, rng: np.random.Generator, **kw: Any
) -> tuple[dict[Any, dict], dict[Any, int], dict[str, Any]]:
    """Per-subject output-space dicts, output counts, and the card's space + selection."""
    if space not in SPACES:
        raise InvalidParameterError(f"space {space!r} is not one of {', '.join(SPACES)}")
    if space == "surface":
        hemis = dict(kw.get("hemispheres") or SURFACE_HEMIS)
        sdict = {"kind": "surface", "template": "toyaverage", "hemispheres": list(hemis), "n_vertices": hemis}
        n = sum(hemis.values())
        lengths = {f"{h}_vertices": v for h, v in hemis.items()}
        return {s: sdict for s in subjects}, {s: n for s in subjects}, {"space": sdict, "lengths": lengths}
    if space == "sensor_time":
        channels, times = list(kw.get("channels") or CHANNELS), list(kw.get("times_ms") or TIMES_MS)
        n_reps = int(kw.get("n_reps") or N_REPS)
        sdict = {"kind": "sensor_time", "channels": channels, "times_ms": times, "n_reps": n_reps}
        n = n_reps * len(channels) * len(times)
        sel = {"channels": channels, "lengths": {"timepoints": len(times)}}
        return {s: sdict for s in subjects}, {s: n for s in subjects}, {"space": sdict, **sel}
    default = 30 if space == "volume" else 20
    counts = dict(n_outputs) if isinstance(n_outputs, Mapping) else {s: int(n_outputs or default) for s in subjects}
    if space == "flat":
        sdict = {"kind": "flat"}
        return {s: sdict for s in subjects}, counts, {"space": sdict}
    grid = tuple(kw.get("grid") or VOLUME_GRID)
    spaces = {}
    for s in subjects:
        if counts[s] > int(np.prod(grid)):
            raise InvalidParameterError(f"{counts[s]} voxels do not fit a {grid} grid; pass a larger grid=")
        flat = rng.choice(int(np.prod(grid)), size=counts[s], replace=False)
        ijk = np.stack(np.unravel_index(flat, grid), axis=1).astype(np.int32)
        affine = np.diag([2.0, 2.0, 2.0, 1.0]).tolist()
        spaces[s] = {"kind": "volume", "shape": list(grid), "affine": affine, "voxel_ijk": ijk}
    return spaces, counts, {"space": {"kind": "volume", "shape": list(grid)}}


def _default_rois(space: str, n: int) -> dict[str, np.ndarray]:
    if space == "volume":
        return {k: np.arange(n)[sl] for k, sl in VOLUME_ROIS.items()}
    if space == "surface":
        return {k: np.asarray(v) for k, v in SURFACE_ROIS.items()}
    if space == "flat":
        return {"all": np.arange(n)}
    return {}


class _Served:
    """What serves the models of one registry from a local ``berg_dir``, offline (no server needed)."""

    root: Path
    registry: Path
    berg_dir: Path

    def options(self, cache_dir: str | Path | None = None) -> dict[str, Any]:
        """Keyword arguments of :class:`berg.BERG` (and of ``berg run`` plans) that serve these models offline.

        Parameters
        ----------
        cache_dir : path, optional
            The client's cache (default ``root/cache``).
        """
        return {
            "berg_dir": str(self.berg_dir),
            "cache_dir": str(cache_dir if cache_dir is not None else self.root / "cache"),
            "offline": True,
            "registry": str(self.registry),
        }

    def client(self, cache_dir: str | Path | None = None):
        """A :class:`berg.BERG` client that serves these models (and any other in the same registry)."""
        from berg.api import BERG

        return BERG(**self.options(cache_dir))


@dataclass
class ToyModel(_Served):
    """A synthetic model written by :func:`toy_model`, with the exact weights that define its outputs.

    Attributes
    ----------
    model_id : str
    root : Path
        The folder holding ``registry.yaml``, ``model_cards/`` and ``berg_dir/``.
    registry : Path
    berg_dir : Path
        The local bucket root (the artifact is under ``berg_dir / prefix``).
    prefix : str
    recipe : dict
    space : str
        ``flat``, ``volume``, ``surface`` or ``sensor_time``.
    subjects : list
    readout : str
        ``random``, ``sklearn`` or ``mlp``.
    n_features : int
        Width of the backbone features the model reads.
    projection : (weight, bias) or None
        The folded projection ``z = f @ weight.T + bias`` (float32, as written).
    weights : dict
        Per subject: ``(weight, bias)`` of the linear readout, or the MLP's ``{"w1", "b1", "w2", "b2"}``.
    rois : dict
        Per subject: ``{roi: output rows}``.
    output_spaces : dict
        Per subject: the ``output_space`` written to the metadata (volumes carry ``voxel_ijk``).
    test_images : ndarray or None
        ``readout="sklearn"``: the held-out images, ``(n, H, W, 3)`` uint8.
    expected : dict
        ``readout="sklearn"``: scikit-learn's predictions on ``test_images`` per subject.
    """

    model_id: str
    root: Path
    registry: Path
    berg_dir: Path
    prefix: str
    recipe: dict[str, Any]
    space: str
    subjects: list[Any]
    readout: str
    n_features: int
    projection: tuple[np.ndarray, np.ndarray] | None
    weights: dict[Any, Any]
    rois: dict[Any, dict[str, np.ndarray]]
    output_spaces: dict[Any, dict[str, Any]]
    test_images: np.ndarray | None = None
    expected: dict[Any, np.ndarray] = field(default_factory=dict)
    _sklearn: dict[Any, Callable[[np.ndarray], np.ndarray]] = field(default_factory=dict, repr=False)

    @property
    def roi_rows(self) -> dict[str, np.ndarray]:
        """``{roi: output rows}``, the same for every subject (``rois=`` of :func:`toy_model`)."""
        return self.rois[self.subjects[0]]

    @property
    def voxel_ijk(self) -> dict[Any, np.ndarray]:
        """Per subject: the ``(n_outputs, 3)`` grid indices of a volume model's outputs (empty otherwise)."""
        return {s: sp["voxel_ijk"] for s, sp in self.output_spaces.items() if "voxel_ijk" in sp}

    def predict(self, features: np.ndarray, subject: Any) -> np.ndarray:
        """The ground truth: outputs for backbone ``features``, computed in float64 without berg's engine.

        Parameters
        ----------
        features : ndarray, shape (n, n_features)
        subject : subject id

        Returns
        -------
        ndarray
            ``(n, n_outputs)``, or ``(n, n_reps, n_channels, n_times)`` for ``sensor_time``.
        """
        f = np.asarray(features, dtype=np.float64)
        if subject in self._sklearn:
            out = self._sklearn[subject](f)
        else:
            if self.projection is not None:
                f = f @ self.projection[0].T.astype(np.float64) + self.projection[1]
            w = self.weights[subject]
            if self.readout == "mlp":
                hidden = np.maximum(f @ w["w1"].T.astype(np.float64) + w["b1"], 0)
                out = hidden @ w["w2"].T.astype(np.float64) + w["b2"]
            else:
                out = f @ w[0].T.astype(np.float64) + w[1]
        sp = self.output_spaces[subject]
        if sp["kind"] == "sensor_time":
            out = out.reshape(len(out), sp["n_reps"], len(sp["channels"]), len(sp["times_ms"]))
        return out


def toy_model(
    root: str | Path,
    space: str = "flat",
    *,
    model_id: str | None = None,
    subjects: Sequence[Any] = (1, 2),
    backbone: str | Mapping[str, Any] = "resnet18",
    size: int = 32,
    nodes: Sequence[str] | None = None,
    n_features: int | None = None,
    n_components: int | None = None,
    n_outputs: int | Mapping[Any, int] | None = None,
    rois: Mapping[str, Sequence[int]] | None = None,
    readout: str = "random",
    n_train: int = 24,
    n_test: int = 7,
    seed: int = 0,
    bucket: str = "berg-test-unused",
    prefix: str | None = None,
    dataset: str = "toy",
    model_class: str | None = None,
    creator: str = "berg.testing.toy_model",
    **space_facts: Any,
) -> ToyModel:
    """Write a synthetic model (registry entry + card + native artifact) with known ground truth.

    Parameters
    ----------
    root : path
        Folder for ``registry.yaml`` (created or extended), ``model_cards/`` and ``berg_dir/``.
    space : {"flat", "volume", "surface", "sensor_time"}
        Output space. Facts can be overridden through ``space_facts``: ``grid`` (volume),
        ``hemispheres`` ({"lh": n, "rh": n}), ``channels``, ``times_ms``, ``n_reps`` (sensor_time).
    model_id : str, optional
        Default ``test-toy-<space>``.
    subjects : sequence
        Subject ids.
    backbone : "resnet18" or mapping
        ``"resnet18"`` (seeded untrained torchvision ResNet-18, :func:`resnet18_recipe`), or a
        recipe ``backbone`` mapping (``builder``, ``weights``), which needs ``nodes`` and ``n_features``.
    size : int
        Input size of the ResNet-18 recipe.
    nodes : sequence of str, optional
        Feature nodes (default ``["avgpool"]``).
    n_features : int, optional
        Feature width (known for ResNet-18 ``avgpool``: 512).
    n_components : int, optional
        Add a folded projection ``n_features -> n_components`` before the readout (``scaler_pca``).
    n_outputs : int or {subject: int}, optional
        Outputs per subject of ``flat`` (default 20) and ``volume`` (default 30) models; ``surface`` and
        ``sensor_time`` counts follow from their space.
    rois : {name: rows}, optional
        ROIs (the same for every subject). Defaults: volume ``A``/``B`` (overlapping), surface
        ``V1``/``FFA``, flat ``all``, sensor_time none.
    readout : {"random", "sklearn", "mlp"}
        ``random``: random linear readout. ``sklearn``: StandardScaler -> PCA(``n_components`` or 8) ->
        LinearRegression fitted by scikit-learn on :func:`reference_features` of ``n_train`` random
        images and random responses; :attr:`ToyModel.expected` holds scikit-learn's predictions on
        ``n_test`` held-out images (ResNet-18 only). ``mlp``: a non-linear two-layer ReLU readout served
        by :class:`ToyMLPModel` (a model class that subclasses nothing of berg's).
    seed : int
        Seed of every random draw.
    bucket, prefix : str
        The entry's S3 source; the artifact is written to ``root/berg_dir/<prefix>``, which a client
        with ``berg_dir=root/berg_dir`` reads without any server. Default prefix ``toys/<model_id>/``.
    dataset : str
        The entry's ``dataset``.
    model_class : str, optional
        ``"module:Class"`` serving the entry (default: berg's engine, or :class:`ToyMLPModel`).
    creator : str
        Written to the manifest and the card.

    Returns
    -------
    ToyModel

    Examples
    --------
    >>> from berg.testing import toy_model
    >>> toy = toy_model(tmp_path, "surface")                        # doctest: +SKIP
    >>> model = toy.client().get_encoding_model(toy.model_id, subject=1, backbone_weights="untrained")
    """
    if readout not in READOUTS:
        raise InvalidParameterError(f"readout {readout!r} is not one of {', '.join(READOUTS)}")
    root = Path(root)
    model_id = model_id or f"test-toy-{space.replace('_', '-')}"
    prefix = prefix or f"toys/{model_id}/"
    subjects = list(subjects)
    nodes = list(nodes or ["avgpool"])
    if backbone == "resnet18":
        recipe = resnet18_recipe(size=size, nodes=nodes, output_space=space)
        n_features = n_features or sum(RESNET18_WIDTHS.get(n, 0) for n in nodes) or None
    elif isinstance(backbone, Mapping):
        recipe = {**resnet18_recipe(size=size, nodes=nodes, output_space=space), "backbone": dict(backbone)}
    else:
        raise InvalidParameterError(f"backbone is 'resnet18' or a recipe backbone mapping, got {backbone!r}")
    if not n_features:
        raise InvalidParameterError(f"pass n_features= (the width of nodes {nodes} of {recipe['backbone']})")
    if readout == "sklearn" and backbone != "resnet18":
        raise InvalidParameterError("readout='sklearn' fits on reference ResNet-18 features: use backbone='resnet18'")
    toy = ToyModel(
        model_id=model_id,
        root=root,
        registry=root / "registry.yaml",
        berg_dir=root / "berg_dir",
        prefix=prefix,
        recipe=recipe,
        space=space,
        subjects=subjects,
        readout=readout,
        n_features=int(n_features),
        projection=None,
        weights={},
        rois={},
        output_spaces={},
    )
    card_space, counts = _write_artifact(
        toy, n_outputs, rois, n_components, seed, creator, size=size, n_train=n_train, n_test=n_test, **space_facts
    )
    selection = {k: v for k, v in card_space.items() if k != "space"}
    roi_names = list(next(iter(toy.rois.values())))
    if roi_names:
        selection["rois"] = roi_names
    if space in ("flat", "volume"):
        selection["n_outputs"] = {s: counts[s] for s in subjects}
    card = synthetic_card(
        model_id,
        space=card_space["space"],
        selection=selection,
        subjects=subjects,
        transform=recipe["transform"],
        creator=creator,
    )
    write_card(root, card)
    entry: dict[str, Any] = {
        "card": f"{model_id}.yaml",
        "modality": card["modality"],
        "dataset": dataset,
        "source": {"kind": "s3", "bucket": bucket, "prefix": prefix},
        "layout": "native",
        "recipe": recipe,
    }
    if model_class or readout == "mlp":
        entry["model_class"] = model_class or "berg.testing.toys:ToyMLPModel"
    add_registry_entry(toy.registry, model_id, entry)
    return toy


def _write_artifact(
    toy: ToyModel,
    n_outputs: int | Mapping[Any, int] | None,
    rois: Mapping[str, Sequence[int]] | None,
    n_components: int | None,
    seed: int,
    creator: str,
    *,
    size: int,
    n_train: int,
    n_test: int,
    out_dir: Path | None = None,
    **space_facts: Any,
) -> tuple[dict[str, Any], dict[Any, int]]:
    """Draw the weights, write the native artifact (to ``out_dir``, default the toy's) and fill ``toy``."""
    from berg.store.artifacts import ArtifactWriter

    rng = np.random.default_rng(seed)
    spaces, counts, card_space = _space_facts(toy.space, toy.subjects, n_outputs, rng, **space_facts)
    writer = ArtifactWriter(out_dir or toy.berg_dir / toy.prefix, toy.model_id)
    projection, sk_parts, f_test = None, None, None
    if toy.readout == "sklearn":
        sk_parts, toy.test_images, f_test, projection = _fit_sklearn_projection(
            rng, n_components or 8, size, n_train, n_test
        )
    elif n_components:
        projection = (
            (rng.standard_normal((n_components, toy.n_features)) / np.sqrt(toy.n_features)).astype(np.float32),
            rng.standard_normal(n_components).astype(np.float32),
        )
    if projection is not None:
        toy.recipe["projection"] = "scaler_pca"
        writer.add_tensors("projection.safetensors", {"weight": projection[0], "bias": projection[1]})
    toy.projection = projection
    width = projection[0].shape[0] if projection is not None else toy.n_features
    for s in toy.subjects:
        label = subject_label(s)
        n = counts[s]
        if toy.readout == "mlp":
            w = {
                "w1": (rng.standard_normal((MLP_HIDDEN, width)) / np.sqrt(width)).astype(np.float32),
                "b1": rng.standard_normal(MLP_HIDDEN).astype(np.float32),
                "w2": rng.standard_normal((n, MLP_HIDDEN)).astype(np.float32),
                "b2": rng.standard_normal(n).astype(np.float32),
            }
            writer.add_tensors(f"mlp/{label}.safetensors", w)
        else:
            if toy.readout == "sklearn":
                w, toy.expected[s], toy._sklearn[s] = _fit_sklearn_readout(rng, sk_parts, f_test, n)
            else:
                w = (
                    (rng.standard_normal((n, width)) / np.sqrt(width)).astype(np.float32),
                    rng.standard_normal(n).astype(np.float32),
                )
            writer.add_tensors(f"readout/{label}.safetensors", {"weight": w[0], "bias": w[1]})
        toy.weights[s] = w
        sub_rois = {k: np.asarray(v, dtype=np.int64) for k, v in (rois or _default_rois(toy.space, n)).items()}
        toy.rois[s] = sub_rois
        toy.output_spaces[s] = sp = spaces[s]
        tensors = {f"roi/{k}": v for k, v in sub_rois.items()}
        tensors["accuracy/correlation"] = rng.uniform(0, 1, n).astype(np.float32)
        if "voxel_ijk" in sp:
            tensors["voxel_ijk"] = sp["voxel_ijk"]
        writer.add_tensors(f"metadata/{label}.safetensors", tensors)
        meta_space = {k: v for k, v in sp.items() if k != "voxel_ijk"}
        writer.add_json(
            f"metadata/{label}.json",
            {"n_outputs": n, "output_space": meta_space, "rois": list(sub_rois), "info": {"synthetic": True}},
        )
    writer.finalize({"creator": creator, "seed": seed})
    return card_space, counts


def _fit_sklearn_projection(rng: np.random.Generator, k: int, size: int, n_train: int, n_test: int):
    """StandardScaler -> PCA fitted by scikit-learn on reference features of random images."""
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    from berg.core.readouts import Projection

    train = rng.integers(0, 256, size=(n_train, 40, 48, 3), dtype=np.uint8)
    test = rng.integers(0, 256, size=(n_test, 50, 36, 3), dtype=np.uint8)
    f_train = reference_features(list(train), size=size)
    f_test = reference_features(list(test), size=size)
    scaler = StandardScaler().fit(f_train)
    pca = PCA(n_components=k, random_state=0).fit(scaler.transform(f_train))
    proj = Projection.from_scaler_components(scaler.mean_ + scaler.scale_ * pca.mean_, scaler.scale_, pca.components_)
    parts = {"scaler": scaler, "pca": pca, "z_train": pca.transform(scaler.transform(f_train))}
    return parts, test, f_test, (np.asarray(proj.weight), np.asarray(proj.bias))


def _fit_sklearn_readout(rng: np.random.Generator, parts: dict, f_test: np.ndarray, n: int):
    """LinearRegression from the PCA scores to random responses; scikit-learn's predictions are the truth."""
    from sklearn.linear_model import LinearRegression

    scaler, pca, z_train = parts["scaler"], parts["pca"], parts["z_train"]
    reg = LinearRegression().fit(z_train, rng.standard_normal((len(z_train), n)))

    def predict(f: np.ndarray) -> np.ndarray:
        return reg.predict(pca.transform(scaler.transform(f)))

    weights = (reg.coef_.astype(np.float32), reg.intercept_.astype(np.float32))
    return weights, predict(f_test), predict


class ToyMLPModel:
    """A non-linear model (features -> ReLU MLP -> outputs) implementing berg's model interface by duck typing.

    It subclasses nothing of berg's: it is the proof that a registry entry naming any class with the
    interface's methods is served like a built-in model. :func:`toy_model` with ``readout="mlp"``
    registers it.
    """

    def __init__(self, request, layout, extractor, mlps, spaces, rows):
        self.spec, self.layout, self.extractor = request.spec, layout, extractor
        self.model_id = request.spec.model_id
        self.subjects = list(request.subjects)
        self.multi_subject = request.multi_subject
        self.device = request.device
        self.batch_size = request.batch_size
        self.mlps, self.spaces, self.rows = mlps, spaces, rows

    @classmethod
    def validate_options(cls, spec, options):
        """The card's options, validated by the spec."""
        return spec.validate_options(options)

    @classmethod
    def load(cls, request):
        """Fetch the MLP weights and metadata of the requested subjects; build the feature extractor."""
        from berg.features import FeatureExtractor
        from berg.store.artifacts import read_tensors

        layout = request.layout()
        keys = [k for s in request.subjects for k in (f"mlp/sub-{s:02d}.safetensors", *layout.metadata_keys(s))]
        layout.fetch_keys(keys)
        mlps, spaces, rows = {}, {}, {}
        for s in request.subjects:
            mlps[s] = read_tensors(layout.fetch(f"mlp/sub-{s:02d}.safetensors"), mmap=False)
            rows[s], spaces[s] = layout.output_space(s).narrow(request.selections[s], {})
        extractor = FeatureExtractor(
            request.spec.recipe,
            backbone_weights=request.backbone_weights,
            device=request.device,
            seed=request.backbone_seed,
        )
        return cls(request, layout, extractor, mlps, spaces, rows)

    def space(self, subject=None):
        """The output space of ``subject`` (default: the first)."""
        return self.spaces[self.subjects[0] if subject is None else subject]

    def predict_features(self, feats: np.ndarray, subject) -> np.ndarray:
        """Outputs of ``subject`` for backbone features ``feats``."""
        m = self.mlps[subject]
        hidden = np.maximum(feats @ m["w1"].T + m["b1"], 0)
        out = hidden @ m["w2"].T + m["b2"]
        if self.rows[subject] is not None:
            out = out[:, self.rows[subject]]
        return self.spaces[subject].reshape(out.astype(np.float32))

    def prepare_stimuli(self, stimulus):
        """Stimuli as berg loads images."""
        from berg.stimuli import load_stimuli

        return load_stimuli(stimulus, "image")

    def encode(self, stimulus, *, show_progress=True):
        """Responses of every loaded subject (a dict when several were requested)."""
        from berg.core.engine import iter_features

        stimuli = self.prepare_stimuli(stimulus)
        feats = np.concatenate(list(iter_features(self.extractor, stimuli, batch_size=self.batch_size)))
        out = {s: self.predict_features(feats, s) for s in self.subjects}
        return out if self.multi_subject else out[self.subjects[0]]

    def get_metadata(self):
        """The artifact's metadata per subject."""
        metas = {s: self.layout.load_metadata(s) for s in self.subjects}
        return metas if self.multi_subject else metas[self.subjects[0]]

    def provenance(self):
        """Model id, subjects and the checksums of the weights files."""
        return {
            "model_id": self.model_id,
            "subjects": self.subjects,
            "kind": "toy-mlp",
            "artifacts": self.layout.checksums([f"mlp/sub-{s:02d}.safetensors" for s in self.subjects]),
        }

    def output_ids(self, subject=None):
        """Output indices ``0..n-1``."""
        return np.arange(self.space(subject).n_outputs)


class IncompleteModel:
    """A model class that lacks ``encode``/``provenance``: loading an entry naming it must say so."""

    @classmethod
    def load(cls, request):  # pragma: no cover - never reached: berg refuses the class first
        return cls()


def build_toy_model(data_dir: str | Path, out_dir: str | Path, *, options: Mapping[str, Any], work_dir: str | Path):
    """A creator for ``berg build``: writes a random surface model seeded by ``data_dir/seed.json``.

    The toy stands in for a model built from a dataset: ``seed.json`` (``{"seed": int}``) plus the
    ``offset`` option choose the weights, and ``work_dir/progress.txt`` is what a resumable build keeps.
    """
    from berg.fsutil import atomic_write_text

    seed = int(json.loads((Path(data_dir) / "seed.json").read_text())["seed"]) + int(options.get("offset", 0))
    atomic_write_text(Path(work_dir) / "progress.txt", "features done\n")
    toy = ToyModel(
        model_id=BUILT_TOY_ID,
        root=Path(work_dir),
        registry=Path(work_dir) / "registry.yaml",
        berg_dir=Path(out_dir),
        prefix="",
        recipe=resnet18_recipe(size=32, output_space="surface"),
        space="surface",
        subjects=[1, 2],
        readout="random",
        n_features=RESNET18_WIDTHS["avgpool"],
        projection=None,
        weights={},
        rois={},
        output_spaces={},
    )
    _write_artifact(toy, None, None, None, seed, "berg.testing.build_toy_model", size=32, n_train=0, n_test=0)


@dataclass
class ToySuite(_Served):
    """The models of :func:`toy_suite`, all in one registry.

    Attributes
    ----------
    root, registry, berg_dir : Path
    models : dict
        ``{model_id: ToyModel}`` of the models with an artifact (``mlp``, ``surface_a``, ``surface_b``).
    """

    root: Path
    registry: Path
    berg_dir: Path
    models: dict[str, ToyModel]

    @property
    def mlp(self) -> dict[Any, dict[str, np.ndarray]]:
        """Per-subject weights of ``test-toy-mlp``."""
        return self.models["test-toy-mlp"].weights

    @property
    def surface_a(self) -> dict[Any, tuple[np.ndarray, np.ndarray]]:
        """Per-subject ``(weight, bias)`` of ``test-toy-surface-a``."""
        return self.models["test-toy-surface-a"].weights

    @property
    def surface_b(self) -> dict[Any, tuple[np.ndarray, np.ndarray]]:
        """Per-subject ``(weight, bias)`` of ``test-toy-surface-b``."""
        return self.models["test-toy-surface-b"].weights


def toy_suite(root: str | Path) -> ToySuite:
    """One registry holding a model of every kind the model contract allows, at 32 px.

    * ``test-toy-mlp``: a non-linear sensor x time model with 2 repetitions (``(n, 2, 5, 7)``), served
      by :class:`ToyMLPModel`, which subclasses nothing of berg's;
    * ``test-toy-surface-a`` / ``-b``: linear surface models (two hemispheres, ROIs) on berg's engine;
    * ``test-toy-ensemble``: the weighted mean (1:3) of the two surface models, declared in the registry;
    * ``test-toy-recipe``: a model built by ``berg build`` (:func:`build_toy_model`) from a folder
      holding ``seed.json``;
    * ``test-toy-incomplete``: an entry naming :class:`IncompleteModel` (loading it must fail clearly).

    Parameters
    ----------
    root : path
        An empty folder.

    Returns
    -------
    ToySuite
    """
    root = Path(root)
    models = {
        "test-toy-mlp": toy_model(root, "sensor_time", model_id="test-toy-mlp", readout="mlp", seed=1),
        "test-toy-surface-a": toy_model(root, "surface", model_id="test-toy-surface-a", seed=2),
        "test-toy-surface-b": toy_model(root, "surface", model_id="test-toy-surface-b", seed=3),
    }
    surface = registry_entry(root, "test-toy-surface-a")
    card = read_card(root, "test-toy-surface-a")
    for model_id in ("test-toy-ensemble", BUILT_TOY_ID, "test-toy-incomplete"):
        write_card(root, {**card, "id": model_id, "name": f"Synthetic model {model_id} (not a brain model)"})
    add_registry_entry(
        root / "registry.yaml",
        "test-toy-ensemble",
        {
            "card": "test-toy-ensemble.yaml",
            "modality": "fmri",
            "dataset": "toy",
            "ensemble": {
                "members": [
                    {"model": "test-toy-surface-a", "weight": 1.0},
                    {"model": "test-toy-surface-b", "weight": 3.0},
                ]
            },
        },
    )
    add_registry_entry(
        root / "registry.yaml",
        BUILT_TOY_ID,
        {
            **surface,
            "card": f"{BUILT_TOY_ID}.yaml",
            "source": {
                "kind": "build",
                "prefix": f"{BUILT_TOY_ID}/",
                "command": f"berg build {BUILT_TOY_ID} --data DIR",
                "data": "a folder with seed.json",
            },
            "build": {
                "creator": "berg.testing.toys:build_toy_model",
                "data": "a folder with seed.json",
                "options": {"offset": 0},
            },
        },
    )
    add_registry_entry(
        root / "registry.yaml",
        "test-toy-incomplete",
        {**surface, "card": "test-toy-incomplete.yaml", "model_class": "berg.testing.toys:IncompleteModel"},
    )
    return ToySuite(root, root / "registry.yaml", root / "berg_dir", models)


def registry_entry(root: str | Path, model_id: str) -> dict[str, Any]:
    """The registry entry of ``model_id`` in ``root/registry.yaml`` (a copy)."""
    import yaml

    return dict(yaml.safe_load((Path(root) / "registry.yaml").read_text())["models"][model_id])


def read_card(root: str | Path, model_id: str) -> dict[str, Any]:
    """The card of ``model_id`` in ``root/model_cards/`` (a copy)."""
    import yaml

    return dict(yaml.safe_load((Path(root) / "model_cards" / f"{model_id}.yaml").read_text()))
