"""Feature time series per convolution kernel (Sohn et al. 2024): VGG-16's 13 conv layers on a movie.

Sohn, Di, Liang, Zhang & Biswal (2024, bioRxiv 10.1101/2024.01.20.576341) feed every frame of a movie
(*Partly Cloudy*) to an ImageNet VGG-16, average each kernel's activation map over space, and average
the frames within each fMRI volume (24 fps x TR 2 s = 48 frames per volume), dropping the first volumes
as the study does. Each of the 4,224 kernels (64 + 64 + 128 + 128 + 3 x 256 + 6 x 512) then gives one
regressor for a voxelwise GLM (:mod:`berg.experiments.glm`).

:func:`kernel_time_series` streams the movie (PyAV) in batches, so a feature film never sits in
memory; it uses berg's image transform (224 x 224, ImageNet normalisation) and berg's backbone loader
(``backbone_weights``: ``None`` = torchvision's ImageNet weights, ``"untrained"``, or a local file).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from berg.errors import InvalidParameterError, StimulusError, close_matches

__all__ = [
    "VGG16_LAYERS",
    "VGG16_RECIPE",
    "KernelTimeSeries",
    "VGG16Kernels",
    "kernel_time_series",
]

log = logging.getLogger(__name__)

#: The 13 convolution layers of VGG-16: name -> (index of the conv in ``features``, number of kernels).
VGG16_LAYERS: dict[str, tuple[int, int]] = {
    "conv1_1": (0, 64),
    "conv1_2": (2, 64),
    "conv2_1": (5, 128),
    "conv2_2": (7, 128),
    "conv3_1": (10, 256),
    "conv3_2": (12, 256),
    "conv3_3": (14, 256),
    "conv4_1": (17, 512),
    "conv4_2": (19, 512),
    "conv4_3": (21, 512),
    "conv5_1": (24, 512),
    "conv5_2": (26, 512),
    "conv5_3": (28, 512),
}

#: Backbone and preprocessing (declared once, as berg's registry recipes are).
VGG16_RECIPE: dict[str, Any] = {
    "backbone": {"builder": "torchvision.models.vgg16", "weights": "VGG16_Weights.IMAGENET1K_V1"},
    "transform": {
        "kind": "image",
        "size": [224, 224],
        "resize": "squash",
        "crop": None,
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
    },
}

_ACTIVATIONS = ("relu", "conv")


@dataclass
class KernelTimeSeries:
    """One time series per kernel, on the scan's TR grid.

    Attributes
    ----------
    data : np.ndarray
        float32 ``(n_tr, n_kernels)``; row ``k`` is volume ``n_drop + k`` of the movie.
    layers : dict
        Layer name -> ``(start, stop)`` columns of ``data``.
    tr : float
    n_drop : int
        Leading volumes dropped.
    frames_per_tr : np.ndarray
        Frames averaged into each row.
    fps : float
        Frame rate of the movie.
    info : dict
        Backbone, weights, activation, preprocessing.
    """

    data: np.ndarray
    layers: dict[str, tuple[int, int]]
    tr: float
    n_drop: int
    frames_per_tr: np.ndarray
    fps: float
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def n_kernels(self) -> int:
        return int(self.data.shape[1])

    @property
    def kernel_names(self) -> list[str]:
        """``"conv1_1:0"`` ... one per column (kernel numbers from 0, as in torchvision)."""
        return [f"{name}:{k}" for name, (a, b) in self.layers.items() for k in range(b - a)]

    def layer(self, name: str) -> np.ndarray:
        """Columns of one layer, ``(n_tr, n_kernels_in_layer)``."""
        if name not in self.layers:
            hint = close_matches(name, self.layers)
            raise InvalidParameterError(
                f"unknown layer {name!r}{f' (did you mean {hint[0]!r}?)' if hint else ''}; "
                f"layers: {', '.join(self.layers)}"
            )
        a, b = self.layers[name]
        return self.data[:, a:b]

    def column(self, layer: str, kernel: int) -> int:
        """Column index of ``kernel`` (0-based) of ``layer``."""
        a, b = self.layers[layer] if layer in self.layers else (None, None)
        if a is None:
            self.layer(layer)  # raises with the valid names
        if not 0 <= int(kernel) < b - a:
            raise InvalidParameterError(f"{layer} has kernels 0..{b - a - 1}, got {kernel}")
        return a + int(kernel)

    def times(self) -> np.ndarray:
        """Acquisition time (s) of each row's volume start, counted from the movie's start."""
        return (np.arange(self.data.shape[0]) + self.n_drop) * self.tr

    def to_frame(self):
        """A pandas DataFrame (rows: volumes, columns: kernel names)."""
        import pandas as pd

        return pd.DataFrame(self.data, columns=self.kernel_names, index=pd.Index(self.times(), name="time_s"))

    def plot(self, layer: str, kernels: Sequence[int] = (0, 1, 2), *, out_path: str | Path | None = None):
        """Time series of some kernels of one layer (z-scored), as a matplotlib figure."""
        from berg.experiments.validation import _pyplot, save_figure

        plt = _pyplot()
        fig, ax = plt.subplots(figsize=(9, 3.2))
        for k in kernels:
            x = self.data[:, self.column(layer, k)].astype(np.float64)
            ax.plot(self.times(), (x - x.mean()) / (x.std() or 1.0), label=f"{layer}:{k}")
        ax.set_xlabel("time (s)")
        ax.set_ylabel("z-scored mean activation")
        ax.legend(loc="upper right", fontsize=8)
        ax.set_title(f"VGG-16 {layer} kernel time series (TR {self.tr:g} s)")
        if out_path is not None:
            save_figure(fig, out_path)
        return fig


class VGG16Kernels:
    """VGG-16 up to its last conv layer, returning each kernel's spatial mean activation.

    Parameters
    ----------
    layers : sequence of str, optional
        Which of :data:`VGG16_LAYERS` (default all 13). The network stops after the deepest one asked.
    activation : {"relu", "conv"}
        Average the map after the layer's ReLU (default) or the raw convolution output.
    backbone_weights : None, "untrained" or path
        See :func:`berg.features.build_backbone`.
    device : str
    seed : int
        Seed of an untrained network.
    size : int
        Frames are resized to ``size x size`` (VGG-16's 224; smaller sizes are for quick tests).
    """

    def __init__(
        self,
        layers: Sequence[str] | None = None,
        *,
        activation: str = "relu",
        backbone_weights: Any = None,
        device: str = "cpu",
        seed: int = 0,
        size: int = 224,
    ):
        import torch

        from berg.features import build_backbone, resolve_device
        from berg.transforms import from_recipe

        names = list(VGG16_LAYERS) if layers is None else list(layers)
        bad = [n for n in names if n not in VGG16_LAYERS]
        if bad or not names:
            raise InvalidParameterError(f"unknown VGG-16 layer(s) {bad or names}; valid: {', '.join(VGG16_LAYERS)}")
        if activation not in _ACTIVATIONS:
            raise InvalidParameterError(f"activation={activation!r}; valid: {', '.join(_ACTIVATIONS)}")
        self.layer_names = sorted(names, key=lambda n: VGG16_LAYERS[n][0])
        self.activation = activation
        self.device = resolve_device(device)
        if not isinstance(size, (int, np.integer)) or size < 32:
            raise InvalidParameterError(f"size must be an integer >= 32 pixels (VGG-16: 224), got {size!r}")
        self.transform = from_recipe(VGG16_RECIPE["transform"], size=(int(size), int(size)))
        net = build_backbone(VGG16_RECIPE["backbone"], backbone_weights, seed=seed)
        last = VGG16_LAYERS[self.layer_names[-1]][0] + 1  # through the deepest layer's ReLU
        self.features = net.features[: last + 1].eval().to(self.device)
        offset = 1 if activation == "relu" else 0
        self._taps = {VGG16_LAYERS[n][0] + offset: n for n in self.layer_names}
        self.layers: dict[str, tuple[int, int]] = {}
        start = 0
        for n in self.layer_names:
            self.layers[n] = (start, start + VGG16_LAYERS[n][1])
            start += VGG16_LAYERS[n][1]
        self.n_kernels = start
        self.backbone_weights = "pretrained" if backbone_weights is None else str(backbone_weights)
        self._torch = torch

    def __call__(self, x) -> Any:
        """Preprocessed batch ``(B, 3, 224, 224)`` -> ``(B, n_kernels)`` float32 tensor of spatial means."""
        torch = self._torch
        outs = []
        with torch.inference_mode():
            h = x.to(self.device, non_blocking=True)
            for i, module in enumerate(self.features):
                # Means are taken before the next module runs (VGG's ReLUs work in place).
                h = module(h)
                if i in self._taps:
                    outs.append(h.mean(dim=(2, 3)))
            return torch.cat(outs, dim=1).float()

    def extract(self, frames: Sequence[np.ndarray]) -> np.ndarray:
        """uint8 frames ``(H, W, 3)`` -> float32 ``(n, n_kernels)`` numpy array."""
        return self(self.transform(list(frames))).cpu().numpy()


def _iter_video(path: str | Path) -> Iterator[tuple[np.ndarray, float, float]]:
    """Stream ``(frame (H, W, 3) uint8, time from first frame s, stream fps)`` with PyAV."""
    import av

    try:
        container = av.open(str(path))
    except FileNotFoundError as exc:
        raise StimulusError(f"video file not found: {path}") from exc
    except av.error.FFmpegError as exc:  # type: ignore[attr-defined]
        raise StimulusError(f"cannot decode video {path}: {exc}") from exc
    with container:
        if not container.streams.video:
            raise StimulusError(f"{path} has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        rate = float(stream.average_rate) if stream.average_rate else 0.0
        t0 = None
        for i, frame in enumerate(container.decode(stream)):
            t = float(frame.time) if frame.time is not None else (i / rate if rate else float(i) / 25.0)
            t0 = t if t0 is None else t0
            yield frame.to_ndarray(format="rgb24"), t - t0, rate


def kernel_time_series(
    movie: str | Path | np.ndarray,
    tr: float,
    *,
    fps: float | None = None,
    n_drop: int = 0,
    layers: Sequence[str] | None = None,
    activation: str = "relu",
    backbone_weights: Any = None,
    device: str = "cpu",
    batch_size: int = 32,
    seed: int = 0,
    show_progress: bool = False,
    size: int = 224,
    extractor: VGG16Kernels | None = None,
) -> KernelTimeSeries:
    """Sohn et al.'s kernel time series: per-kernel spatial means, frames averaged within each TR.

    Parameters
    ----------
    movie : path or uint8 array ``(n_frames, H, W, 3)``
        A video file (streamed with PyAV: every frame is used) or frames already decoded.
    tr : float
        Seconds per fMRI volume. Frame ``i`` (at ``t_i`` s) goes to volume ``floor(t_i / tr)``; the
        last, incomplete volume is dropped.
    fps : float, optional
        Frame rate of an array ``movie`` (required then); for files the stream's rate is used.
    n_drop : int
        Leading volumes dropped (the study discards its first volumes).
    layers : sequence of str, optional
        Subset of :data:`VGG16_LAYERS` (default all 13, 4,224 kernels).
    activation : {"relu", "conv"}
        Spatial mean after the ReLU (default) or of the raw convolution.
    backbone_weights : None, "untrained" or path
        ``None``: torchvision's ImageNet VGG-16 (as the study); ``"untrained"``: a seeded control.
    device : str
    batch_size : int
        Frames per forward pass.
    seed : int
    show_progress : bool
    size : int
        Frame size fed to the network (224 as in the study).
    extractor : VGG16Kernels, optional
        Reuse an already built network.

    Returns
    -------
    KernelTimeSeries
    """
    if not tr > 0:
        raise InvalidParameterError(f"tr must be > 0 s, got {tr}")
    if not isinstance(n_drop, (int, np.integer)) or n_drop < 0:
        raise InvalidParameterError(f"n_drop must be an integer >= 0, got {n_drop!r}")
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise InvalidParameterError(f"batch_size must be a positive integer, got {batch_size!r}")
    net = extractor or VGG16Kernels(
        layers, activation=activation, backbone_weights=backbone_weights, device=device, seed=seed, size=size
    )
    if isinstance(movie, np.ndarray):
        if fps is None or not fps > 0:
            raise InvalidParameterError("an array movie needs fps= (its frame rate)")
        if movie.ndim != 4 or movie.shape[-1] != 3 or movie.dtype != np.uint8:
            raise StimulusError(f"movie frames must be uint8 (n_frames, H, W, 3), got {movie.dtype} {movie.shape}")
        source: Any = ((f, i / float(fps), float(fps)) for i, f in enumerate(movie))
    else:
        source = _iter_video(movie)

    from berg.env import env_flag

    bar = None
    if show_progress and not env_flag("BERG_QUIET"):
        from tqdm.auto import tqdm

        bar = tqdm(unit="frame", desc="VGG-16 kernels")
    sums: list[np.ndarray] = []
    counts: list[int] = []
    state = {"rate": float(fps or 0.0), "last_t": 0.0}

    def batches() -> Iterator[tuple[list[np.ndarray], list[int]]]:
        frames: list[np.ndarray] = []
        vols: list[int] = []
        for frame, t, r in source:
            state["rate"] = state["rate"] or r
            state["last_t"] = t
            frames.append(frame)
            vols.append(int(math.floor(t / tr + 1e-9)))
            if len(frames) == batch_size:
                yield frames, vols
                frames, vols = [], []
        if frames:
            yield frames, vols

    stream = batches()

    def prepare():
        # Decoding and resizing of the next batch run in a worker thread while the network runs
        # (PyAV, Pillow and torch release the GIL), as berg's engine does for encode.
        item = next(stream, None)
        return None if item is None else (net.transform(item[0]), item[1])

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="berg-kernels") as pool:
        pending = pool.submit(prepare)
        while True:
            item = pending.result()
            if item is None:
                break
            pending = pool.submit(prepare)
            x, vols = item
            feats = net(x).cpu().numpy().astype(np.float64)
            for f, v in zip(feats, vols):
                while len(sums) <= v:
                    sums.append(np.zeros(net.n_kernels))
                    counts.append(0)
                sums[v] += f
                counts[v] += 1
            if bar is not None:
                bar.update(len(vols))
    if bar is not None:
        bar.close()
    if not counts:
        raise StimulusError(f"{movie} contains no frames")
    # The movie ends at last_t + 1/rate; only volumes it covers completely are kept.
    rate, last_t = state["rate"], state["last_t"]
    duration = last_t + (1.0 / rate if rate else 0.0)
    whole = min(len(counts), int(math.floor(duration / tr + 1e-6)))
    if whole <= n_drop:
        raise InvalidParameterError(
            f"the movie ({duration:.1f} s) covers {whole} whole volume(s) of {tr} s; cannot drop {n_drop}"
        )
    cnt = np.asarray(counts[:whole])
    if np.any(cnt == 0):
        raise StimulusError(
            f"volumes {np.flatnonzero(cnt == 0).tolist()} received no frames (frame rate below 1 / TR?)"
        )
    data = (np.stack(sums[:whole]) / cnt[:, None])[n_drop:].astype(np.float32)
    return KernelTimeSeries(
        data=data,
        layers=dict(net.layers),
        tr=float(tr),
        n_drop=int(n_drop),
        frames_per_tr=cnt[n_drop:],
        fps=rate,
        info={
            "backbone": VGG16_RECIPE["backbone"],
            "backbone_weights": net.backbone_weights,
            "activation": net.activation,
            "transform": net.transform.describe(),
        },
    )
