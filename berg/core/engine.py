"""The one encoding engine: backbone -> node features -> projection -> per-subject linear readouts.

Every "backbone + nodes + projection + linear readout" model in the registry runs through
:class:`LinearEncodingModel`; models are declared (registry entry + card + artifact), not re-coded.

Design points (the reasons behind the code):

* One backbone pass per batch feeds every loaded subject, and one pass per *distinct* projection
  (shared by all subjects, or per subject, or per repetition head as in BERG's EEG models); the
  readouts that share a projection are concatenated into one matrix, so ten subjects cost one
  extra matmul, not ten forwards.
* A subject's outputs are its readout heads' outputs in order; the output space reshapes them
  (``(n, n_outputs)`` for volumes and surfaces, ``(n, n_reps, n_channels, n_times)`` for EEG).
* Selections (ROIs, one-hot vectors) slice readout rows once at load; nothing unselected is computed.
* The StandardScaler is folded into the projection at load (see :mod:`berg.core.readouts`), so the
  engine never materialises standardised features or a features x outputs product.
* Preprocessing of batch ``i + 1`` (decoding, resizing) runs in a worker thread while the network
  computes batch ``i``.
* float32 throughout, ``torch.inference_mode``, on the chosen device.
* Each projection and readout GEMM runs with the kernel and operand layout the kernel table chooses for
  its shape (:func:`kernel_choice`, :mod:`berg.core.kernels`), fixed at load, so reruns are bit-identical.
* On CPU, weights of at least ``BERG_STREAM_MB`` MiB are streamed from the page cache per batch in blocks
  (one reused buffer per thread), so many subjects' projections and readouts never sit in memory at once.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy as np

from berg._version import __version__
from berg.core import kernels
from berg.core.contract import BaseModelInterface, LoadRequest
from berg.core.readouts import Projection, ReadoutHead
from berg.core.reliability import Reliability
from berg.errors import ModelLoadError, StimulusError
from berg.stimuli import Stimuli, load_stimuli

if TYPE_CHECKING:  # pragma: no cover
    from berg.core.layouts import ArtifactLayout
    from berg.core.spaces import OutputSpace
    from berg.features import FeatureExtractor
    from berg.registry import ModelSpec, Selection

__all__ = ["LinearEncodingModel", "batch_loop", "iter_features", "iter_batches", "progress_bar"]

log = logging.getLogger(__name__)


def progress_bar(total: int, enabled: bool, desc: str):
    from tqdm.auto import tqdm

    from berg.env import progress_enabled

    return tqdm(total=total, disable=not progress_enabled(enabled), desc=desc, unit="stim", leave=False)


def iter_batches(transform: Any, stimuli: Sequence[Any], batch_size: int) -> Iterator[tuple[int, int, Any]]:
    """Yield ``(start, stop, tensor)`` preprocessed batches, preparing the next batch in a thread."""
    starts = list(range(0, len(stimuli), batch_size))

    def prepare(start: int):
        stop = min(start + batch_size, len(stimuli))
        return start, stop, transform([stimuli[i] for i in range(start, stop)])

    if len(starts) <= 1:
        for start in starts:
            yield prepare(start)
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="berg-preprocess") as pool:
        pending = pool.submit(prepare, starts[0])
        for nxt in starts[1:] + [None]:
            batch = pending.result()
            if nxt is not None:
                pending = pool.submit(prepare, nxt)
            yield batch


def batch_loop(
    stimuli: Sequence[Any],
    transform: Any,
    batch_size: int,
    step: Any,
    *,
    desc: str,
    show_progress: bool = True,
) -> Iterator[tuple[int, int, Any]]:
    """THE batching loop of berg: yield ``(start, stop, step(batch))`` over preprocessed batches.

    Preprocessing of the next batch overlaps the current ``step`` (see :func:`iter_batches`); one progress
    bar counts stimuli. The engine, ensembles, the Algonauts model and group maps all run through it, so
    batching, prefetch and progress behave the same everywhere.

    Parameters
    ----------
    stimuli : sequence
        Prepared stimuli (``model.prepare_stimuli``).
    transform : callable
        Items -> model input (e.g. ``extractor.transform``; a callable returning several inputs is fine).
    batch_size : int
    step : callable
        Model input -> the value yielded for that batch.
    desc : str
        Progress-bar label.
    show_progress : bool
    """
    with progress_bar(len(stimuli), show_progress, desc) as bar:
        for start, stop, x in iter_batches(transform, stimuli, batch_size):
            yield start, stop, step(x)
            bar.update(stop - start)


def iter_features(
    extractor: FeatureExtractor,
    stimuli: Sequence[Any],
    *,
    batch_size: int,
    show_progress: bool = False,
) -> Iterator[np.ndarray]:
    """Features of ``stimuli`` batch by batch, as float32 numpy arrays ``(b, n_features)``.

    The trainer uses this so that models are fitted on exactly the features inference computes.
    """
    with progress_bar(len(stimuli), show_progress, "features") as bar:
        for start, stop, x in iter_batches(extractor.transform, stimuli, batch_size):
            yield extractor(x).cpu().numpy()
            bar.update(stop - start)


#: The fixed rule for shapes the kernel table does not cover: readouts at least this wide use numpy's
#: matmul on CPU (measured faster there: benchmarks/RESULTS.md), narrower maps torch's addmm.
NUMPY_READOUT_MIN_OUTPUTS = 16384


def kernel_choice(n_inputs: int, n_outputs: int, batch: int, device: str) -> kernels.Choice:
    """Kernel and operand layout of one affine map (``n_inputs -> n_outputs``, batches of ``batch``) on ``device``.

    A pure function of the shape, float32, the device and the kernel table in effect
    (:mod:`berg.core.kernels`: the user's ``berg tune`` table, else the one shipped with berg), so repeated
    runs compute bit-identical outputs; nothing is timed here. In order:

    1. ``BERG_READOUT_KERNEL`` (``torch``, ``numpy``, or ``torch_kn``, ``numpy_nk``...) forces it on CPU;
    2. the table's nearest measured shape, when one covers this shape;
    3. the fixed rule: numpy for maps at least :data:`NUMPY_READOUT_MIN_OUTPUTS` wide, torch otherwise,
       with ``W.T`` held contiguous (``kn``) for readouts (``n_outputs >= n_inputs``) and ``W`` as stored
       (``nk``) for projections.

    Non-CPU devices always use torch (the layout from the rule).
    """
    from berg.env import env_str

    layout = "kn" if n_outputs >= n_inputs else "nk"
    forced = kernels.forced_choice(env_str("BERG_READOUT_KERNEL", "auto"), layout)  # validated on every device
    if kernels.device_kind(device) != "cpu":
        return kernels.Choice("torch", layout, "device")
    if forced is not None:
        return forced
    table = kernels.lookup(kernels.active_table(), n_inputs, n_outputs, batch, device="cpu")
    if table is not None:
        return table
    return kernels.Choice("numpy" if n_outputs >= NUMPY_READOUT_MIN_OUTPUTS else "torch", layout, "rule")


def readout_kernel(device: str, n_outputs: int, n_inputs: int | None = None, batch: int | None = None) -> str:
    """Which GEMM library computes a readout: ``"torch"`` or ``"numpy"`` (see :func:`kernel_choice`).

    Without ``n_inputs``/``batch`` the kernel table is not consulted (only ``BERG_READOUT_KERNEL`` and
    the fixed rule). GPUs always use torch.
    """
    if n_inputs is None or batch is None:
        from berg.env import env_str

        forced = kernels.forced_choice(env_str("BERG_READOUT_KERNEL", "auto"), "kn")
        if kernels.device_kind(device) != "cpu":
            return "torch"
        if forced is not None:
            return forced.kernel
        return "numpy" if n_outputs >= NUMPY_READOUT_MIN_OUTPUTS else "torch"
    return kernel_choice(n_inputs, n_outputs, batch, device).kernel


def stream_store(affine_map: Any, *, device: str, batch: int, folder: Any) -> Any:
    """Where a large map's weights stream from on CPU (a :class:`~berg.core.kernels.FileMatrix`), else ``None``.

    Maps smaller than ``BERG_STREAM_MB`` (or any map off CPU) stay in memory. A memory-mapped weight is
    streamed from its own file; an in-memory one is written once to an unnamed temporary file in
    ``folder`` (:func:`berg.core.kernels.spill`) and ``affine_map.weight`` becomes a map of it, so the
    in-memory copy can be freed (``affine_map.stored`` records the file).
    """
    weight = affine_map.weight
    threshold = kernels.stream_threshold_bytes()
    if threshold is None or kernels.device_kind(device) != "cpu" or weight.size * 4 < threshold:
        return None
    stored = getattr(affine_map, "stored", None) or kernels.file_matrix(weight)
    if stored is not None:
        return kernels.stream_copy(stored, folder)  # a cached file in the other layout: its copy
    n_out, n_in = weight.shape
    layout = kernels.stream_layout(n_out, n_in)  # the layout read with one pread per block
    affine_map.weight, affine_map.stored = kernels.spill(weight, layout, folder)
    log.debug("%s (%d x %d) written to a temporary file, streamed from there", type(affine_map).__name__, n_out, n_in)
    return affine_map.stored


def _spill_folder(layout: Any) -> Any:
    store = getattr(layout, "store", None)
    return getattr(store, "cache_dir", None)


class _Group:
    """Readout rows that share one projection: one stacked matmul per batch for all of them (in memory),
    or one streamed matmul per part when the parts are large."""

    def __init__(self, projection: str | None):
        self.projection = projection
        self.parts: list[Any] = []  # the heads' readouts, in target order
        self.targets: list[tuple[int, int, int, int]] = []  # (subject index, dst start, src start, n)
        self.width = 0
        self.ops: list[Any] = []  # one stacked op, or one op per part

    def add(self, subject_index: int, dst: int, readout: Any) -> None:
        n = readout.n_outputs
        self.targets.append((subject_index, dst, self.width, n))
        self.parts.append(readout)
        self.width += n


class LinearEncodingModel(BaseModelInterface):
    """A loaded linear encoding model for one or several subjects.

    Build it with :meth:`load` (``BERG.get_encoding_model`` does); see the module docstring.

    Attributes
    ----------
    spec : ModelSpec
    subjects : list
    extractor : FeatureExtractor
        Backbone and its declared preprocessing (``extractor.transform``).
    projections : dict
        Projection name -> :class:`~berg.core.readouts.Projection` (or ``None``: features go straight in).
    heads : dict
        Subject -> its selected :class:`~berg.core.readouts.ReadoutHead` list.
    spaces : dict
        Subject -> selected output space.
    options : dict
        Validated model options.
    """

    def __init__(
        self,
        spec: ModelSpec,
        *,
        extractor: FeatureExtractor,
        projections: Mapping[str | None, Projection | None],
        heads: Mapping[Any, Sequence[ReadoutHead]],
        spaces: Mapping[Any, OutputSpace],
        selections: Mapping[Any, Selection],
        layout: ArtifactLayout,
        batch_size: int,
        multi_subject: bool,
        options: Mapping[str, Any] | None = None,
        selected_rows: Mapping[Any, np.ndarray | None] | None = None,
    ):
        import torch

        self.spec = spec
        self.model_id = spec.model_id
        self.subjects = list(heads)
        self.extractor = extractor
        self.device = extractor.device
        self.projections = dict(projections)
        self.heads = {s: list(h) for s, h in heads.items()}
        self.spaces = dict(spaces)
        self.selections = dict(selections)
        self.layout = layout
        self.batch_size = batch_size
        self.multi_subject = multi_subject
        self.options = dict(options or {})
        self.selected_rows = dict(selected_rows or {})
        self._metadata: dict[Any, dict[str, Any]] = {}
        self._torch = torch
        self._check_widths()
        self._build_groups()

    # ------------------------------------------------------------------ construction
    def _check_widths(self) -> None:
        widths = set()
        for s, heads in self.heads.items():
            for h in heads:
                proj = self.projections.get(h.projection)
                expected = proj.n_components if proj is not None else None
                if expected is not None and h.readout.n_inputs != expected:
                    raise ModelLoadError(
                        f"{self.model_id}: subject {s} readout expects {h.readout.n_inputs} inputs but projection "
                        f"{h.projection!r} gives {expected} components"
                    )
                if proj is None:
                    widths.add(h.readout.n_inputs)
                elif proj.columns is None:
                    widths.add(proj.n_features)
        sliced = [p.feature_width for p in self.projections.values() if p is not None and p.columns is not None]
        if sliced and not widths:
            widths.add(max(sliced))  # projections that read column slices of one concatenated feature vector
        if len(widths) > 1 or (sliced and max(sliced) > min(widths)):
            raise ModelLoadError(
                f"{self.model_id}: projections/readouts expect different feature widths {sorted(widths | set(sliced))}"
            )
        self.n_features = widths.pop() if widths else 0

    def _build_groups(self) -> None:
        groups: dict[str | None, _Group] = {}
        self._n_out = []
        for si, s in enumerate(self.subjects):
            dst = 0
            for h in self.heads[s]:
                groups.setdefault(h.projection, _Group(h.projection)).add(si, dst, h.readout)
                dst += h.readout.n_outputs
            self._n_out.append(dst)
            if dst != self.spaces[s].n_outputs:
                raise ModelLoadError(
                    f"{self.model_id}: subject {s} has {dst} readout rows but its output space has "
                    f"{self.spaces[s].n_outputs} outputs"
                )
        self._groups = list(groups.values())
        self._buffers: dict[int, np.ndarray] = {}  # thread id -> block buffer (streamed maps only)
        self._proj_ops: dict[Any, kernels.AffineOp] = {}
        self._proj_columns: dict[Any, tuple[int, int] | None] = {}
        folder = _spill_folder(self.layout)
        for g in self._groups:
            proj = self.projections.get(g.projection)
            if proj is not None and g.projection not in self._proj_ops:
                self._proj_ops[g.projection] = self._op(proj, folder)
                self._proj_columns[g.projection] = proj.columns
            stored = [stream_store(r, device=self.device, batch=self.batch_size, folder=folder) for r in g.parts]
            if any(st is not None for st in stored) or len(g.parts) == 1:
                g.ops = [self._op(r, folder) for r in g.parts]
            else:  # small readouts sharing a projection: one stacked matmul
                weight = np.concatenate([r.weight for r in g.parts])
                bias = np.concatenate([r.bias for r in g.parts])
                choice = kernel_choice(weight.shape[1], weight.shape[0], self.batch_size, self.device)
                g.ops = [kernels.AffineOp(weight, bias, choice, device=self.device)]
                del weight
                for r, (_, _, src, n) in zip(g.parts, g.targets):
                    r.weight = g.ops[0].weight[src : src + n]  # views of the one copy kept
            g.kernel, g.layout = g.ops[0].choice.kernel, g.ops[0].choice.layout
            g.streamed = any(op.streamed for op in g.ops)
            g.parts = []
        # The common case (every subject's outputs are one contiguous block of one group) is served
        # with views, no copy.
        self._direct = all(len(self.heads[s]) == 1 for s in self.subjects) and len(self._groups) == 1

    def _op(self, affine_map: Any, folder: Any) -> kernels.AffineOp:
        """The ready-to-run op of a projection or readout (streamed when large); the map keeps a view of its weights."""
        stored = stream_store(affine_map, device=self.device, batch=self.batch_size, folder=folder)
        n_out, n_in = affine_map.weight.shape
        choice = kernel_choice(n_in, n_out, self.batch_size, self.device)
        if stored is not None and stored.layout != choice.layout:
            # a streamed file is read as it lies; the kernel stays the table's
            choice = kernels.Choice(choice.kernel, stored.layout, choice.source)
        op = kernels.AffineOp(affine_map.weight, affine_map.bias, choice, device=self.device, stored=stored)
        if not op.streamed and op.weight is not affine_map.weight:
            affine_map.weight = op.weight  # one copy of the weights, in the operand's layout
        return op

    def _block_buffer(self) -> np.ndarray:
        """The reused buffer streamed blocks are read into (:data:`berg.core.kernels.BLOCK_BYTES`), one per
        thread: a Dask worker may run two batches of one model at once."""
        import threading

        n = kernels.BLOCK_BYTES // 4
        key = threading.get_ident()
        buf = self._buffers.get(key)
        if buf is None or buf.size != n:
            buf = self._buffers[key] = np.empty(n, dtype=np.float32)
        return buf

    @property
    def streamed(self) -> bool:
        """Whether any projection or readout of this model is streamed from disk per batch."""
        return any(op.streamed for op in self._proj_ops.values()) or any(g.streamed for g in self._groups)

    @classmethod
    def validate_options(cls, spec: ModelSpec, options: Mapping[str, Any]) -> dict[str, Any]:
        """Check model options against the card (no I/O); returns them with defaults filled."""
        return spec.validate_options(options)

    @classmethod
    def transform_overrides(cls, spec: ModelSpec, options: Mapping[str, Any]) -> dict[str, Any]:
        """Preprocessing changes implied by model options (none for the plain engine)."""
        return {}

    @classmethod
    def extractor_for(cls, request: LoadRequest) -> FeatureExtractor:
        """The backbone of a request, shared with other models of the same load that compute the same features."""
        from berg.features import FeatureExtractor

        key = json.dumps(
            [
                request.spec.recipe.get("backbone"),
                request.spec.recipe.get("nodes"),
                request.spec.recipe.get("transform"),
                cls.transform_overrides(request.spec, request.options),
                str(request.backbone_weights),
                request.backbone_seed,
                request.device,
            ],
            sort_keys=True,
            default=str,
        )
        cache = request.shared.setdefault("extractors", {})
        if key not in cache:
            cache[key] = FeatureExtractor(
                request.spec.recipe,
                backbone_weights=request.backbone_weights,
                device=request.device,
                seed=request.backbone_seed,
                transform_overrides=cls.transform_overrides(request.spec, request.options),
                offline=getattr(request.client, "offline", None),
            )
        return cache[key]

    @classmethod
    def load(cls, request: LoadRequest) -> LinearEncodingModel:
        """Fetch the artifacts the subjects need, build the backbone, push selections into readout rows."""
        readout_kind = request.spec.recipe.get("readout", "linear")
        if readout_kind != "linear":
            raise ModelLoadError(
                f"{request.model_id}: recipe readout {readout_kind!r} is not linear; a non-linear readout needs a "
                "model_class implementing berg.core.contract.BaseModelInterface"
            )
        layout = request.layout()
        keys = list(dict.fromkeys(k for s in request.subjects for k in layout.model_keys(s)))
        layout.fetch_keys(keys)  # one call: all missing files are reported (or fetched) together
        heads, spaces, selected_rows = cls.selected_heads(request, layout)
        return cls.assemble(
            request,
            layout,
            extractor=cls.extractor_for(request),
            heads=heads,
            spaces=spaces,
            selected_rows=selected_rows,
        )

    @staticmethod
    def selected_heads(request: LoadRequest, layout: ArtifactLayout) -> tuple[dict, dict, dict]:
        """Each subject's readout heads with the selection pushed down, its selected space and kept rows."""
        heads, spaces, selected_rows = {}, {}, {}
        folder = _spill_folder(layout)
        for s in request.subjects:
            full_heads = layout.load_heads(s)
            rows, spaces[s] = layout.output_space(s).narrow(request.selections[s], _LazyRois(layout, s))
            heads[s] = _select_heads(full_heads, rows)
            del full_heads
            for h in heads[s]:
                # a large readout goes to disk now, subject by subject, so loading many subjects never
                # holds all their readouts in memory at once
                stream_store(h.readout, device=request.device, batch=request.batch_size, folder=folder)
            selected_rows[s] = rows
        return heads, spaces, selected_rows

    @classmethod
    def assemble(
        cls,
        request: LoadRequest,
        layout: ArtifactLayout,
        *,
        extractor: FeatureExtractor,
        heads: Mapping[Any, Sequence[ReadoutHead]],
        spaces: Mapping[Any, OutputSpace],
        selected_rows: Mapping[Any, np.ndarray | None],
        projections: Mapping[str | None, Projection | None] | None = None,
    ) -> LinearEncodingModel:
        """Build the model from loaded parts (subclasses with their own loading call this once).

        ``projections`` default to the ones the heads name. Afterwards the layout is told to
        :meth:`~berg.core.layouts.ArtifactLayout.release` what it cached (heads and projections now hold
        their arrays), then :meth:`setup` runs.
        """
        if projections is None:
            names = list(dict.fromkeys(h.projection for hs in heads.values() for h in hs))
            projections = layout.load_projections(names)
        model = cls(
            request.spec,
            extractor=extractor,
            projections=projections,
            heads=heads,
            spaces=spaces,
            selections=request.selections,
            layout=layout,
            batch_size=request.batch_size,
            multi_subject=request.multi_subject,
            options=request.options,
            selected_rows=selected_rows,
        )
        layout.release()
        model.setup()
        return model

    def setup(self) -> None:
        """Hook for subclasses, run once after loading (the plain engine needs nothing)."""

    # ------------------------------------------------------------------ inference
    @property
    def n_outputs(self) -> dict[Any, int]:
        """Subject -> number of (selected) flat outputs."""
        return dict(zip(self.subjects, self._n_out))

    @property
    def model_kwargs(self) -> dict[str, Any]:
        """Alias of :attr:`options` (BERG's name)."""
        return self.options

    def _check_width(self, width: int) -> None:
        if width == self.n_features:
            return
        t = self.extractor.transform
        raise StimulusError(
            f"{self.model_id}: the backbone produced {width:,} features per stimulus with preprocessing "
            f"{t.describe()} (input size {t.input_size}), but the model was fitted on {self.n_features:,} "
            "features. The preprocessing must match training (e.g. a 224x224 crop gives a different "
            "width than the 256x256 frames a model was fitted on)."
        )

    def outputs_from_features(self, features) -> list[Any]:
        """Flat outputs per subject (torch tensors ``(b, n_outputs)``) from backbone features.

        Differentiable when called outside ``inference_mode`` (see :meth:`forward`); ensembles call it
        with features they share between members.
        """
        self._check_width(features.shape[1])
        projected: dict[Any, Any] = {}
        pieces: list[list[Any]] = []  # per group: the output block of each target
        for g in self._groups:
            if g.projection not in projected:
                op = self._proj_ops.get(g.projection)
                cols = self._proj_columns.get(g.projection)
                x = features if cols is None else features[:, cols[0] : cols[1]]
                projected[g.projection] = x if op is None else op(x, self._block_buffer)
            z = projected[g.projection]
            if len(g.ops) == 1 and len(g.targets) > 1:
                y = g.ops[0](z, self._block_buffer)
                pieces.append([y[:, src : src + n] for _, _, src, n in g.targets])
            else:
                pieces.append([op(z, self._block_buffer) for op in g.ops])
        if self._direct:
            return pieces[0]
        outs = [features.new_empty((features.shape[0], n)) for n in self._n_out]
        for g, ys in zip(self._groups, pieces):
            for (si, dst, _, n), y in zip(g.targets, ys):
                outs[si][:, dst : dst + n] = y
        return outs

    def shape_outputs(self, subject: Any, flat: Any) -> Any:
        """Flat outputs ``(b, n_outputs)`` of ``subject`` -> ``(b, *space.shape)``.

        The public output-shaping hook: called on numpy arrays by :meth:`iter_encode` and on torch tensors
        by :meth:`forward`, so a subclass that reduces outputs (e.g. averages repetitions) does it once,
        for both paths.
        """
        return flat.reshape((flat.shape[0], *self.spaces[subject].shape))

    def iter_encode(
        self, stimuli: Stimuli, *, show_progress: bool = True
    ) -> Iterator[tuple[int, int, list[np.ndarray]]]:
        """Yield ``(start, stop, [responses per subject])`` batch by batch (the one batching loop).

        Responses have the space's shape: ``(b, *model.space(subject).shape)``.
        """

        def step(x):
            features = self.extractor(x)
            with self._torch.inference_mode():
                outs = self.outputs_from_features(features)
            return [self.shape_outputs(s, o.cpu().numpy()) for s, o in zip(self.subjects, outs)]

        yield from batch_loop(
            stimuli, self.extractor.transform, self.batch_size, step, desc=self.model_id, show_progress=show_progress
        )

    def forward(self, x):
        """Differentiable responses of a preprocessed batch: gradients flow through backbone, projection
        and readout (no numpy round-trip).

        Parameters
        ----------
        x : torch.Tensor
            ``(B, 3, H, W)`` float (``(B, 3, T, H, W)`` for video), normalised as the model's transform
            does (see ``model.extractor.transform.describe()``); use :meth:`forward_pixels` for
            ``[0, 1]`` pixels.

        Returns
        -------
        torch.Tensor or dict
            ``(B, *space.shape)`` on the model's device; ``{subject: tensor}`` for several subjects.
        """
        outs = self.outputs_from_features(self.extractor.forward(x))
        shaped = {s: self.shape_outputs(s, o) for s, o in zip(self.subjects, outs)}
        return shaped if self.multi_subject else shaped[self.subjects[0]]

    def forward_pixels(self, pixels):
        """:meth:`forward` on ``[0, 1]`` RGB pixels: ``(B, 3, H, W)`` images (``(B, 3, T, H, W)`` videos).

        The preprocessing is the model's own transform as torch ops
        (``extractor.transform.pixels_to_input``: the same resize, crop, interpolation, antialiasing and
        normalisation ``encode`` applies), so ``forward_pixels(x)`` equals ``encode`` of the same images and
        gradients reach the pixels.
        """
        return self.forward(self.extractor.transform.pixels_to_input(pixels))

    def prepare_stimuli(self, stimulus: Any, *, allow_still_images: bool = False) -> Stimuli:
        """Validate a stimulus for this model (kind and minimum frames from the registry/card).

        Decoding is told what the preprocessing keeps (the size images are resized to, the frames a video
        model samples), so large JPEGs decode at reduced scale and videos keep only the sampled frames.
        """
        t = self.extractor.transform
        if t.kind == "video":
            hints = {"n_frames": int(t.n_frames)}
        else:
            hints = {"target_size": tuple(getattr(t, "size", None) or t.input_size)}
        return load_stimuli(
            stimulus,
            self.spec.input_kind,
            min_frames=self.spec.min_frames,
            allow_still_images=allow_still_images,
            **hints,
        )

    def encode(
        self, stimulus: Any, *, show_progress: bool = True, allow_still_images: bool = False
    ) -> np.ndarray | dict[Any, np.ndarray]:
        """In silico responses to ``stimulus``.

        Parameters
        ----------
        stimulus : array, path(s), folder, glob or PIL image(s)
            See :mod:`berg.stimuli` for accepted forms.
        show_progress : bool
            Progress bar over stimuli (``BERG_QUIET=1`` turns every bar off).
        allow_still_images : bool
            For video models: accept still images as one-frame clips (refused by default: "this
            model takes videos").

        Returns
        -------
        np.ndarray or dict
            float32 ``(n_stimuli, *model.space().shape)``; ``{subject: array}`` when several subjects
            were loaded.
        """
        stimuli = self.prepare_stimuli(stimulus, allow_still_images=allow_still_images)
        out: dict[Any, np.ndarray] = {}
        if 0 < len(stimuli) <= self.batch_size:
            # one batch: its arrays are the result (no second copy of every subject's outputs)
            for _, _, per_subject in self.iter_encode(stimuli, show_progress=show_progress):
                out = {s: np.ascontiguousarray(y, dtype=np.float32) for s, y in zip(self.subjects, per_subject)}
        else:
            out = {s: np.empty((len(stimuli), *self.spaces[s].shape), dtype=np.float32) for s in self.subjects}
            for start, stop, per_subject in self.iter_encode(stimuli, show_progress=show_progress):
                for s, y in zip(self.subjects, per_subject):
                    out[s][start:stop] = y
        return out if self.multi_subject else out[self.subjects[0]]

    # ------------------------------------------------------------------ metadata and outputs
    def get_metadata(self) -> dict[str, Any]:
        """The subject's metadata dict (``{subject: dict}`` when several subjects were loaded)."""
        for s in self.subjects:
            if s not in self._metadata:
                self._metadata[s] = self.layout.load_metadata(s)
        if self.multi_subject:
            return {s: self._metadata[s] for s in self.subjects}
        return self._metadata[self.subjects[0]]

    def reliability(self, subject: Any = None) -> Reliability:
        """Per-output NCSNR / noise ceiling for the current selection, from the layout's metadata.

        See :meth:`berg.core.contract.BaseModelInterface.reliability`; the layout knows where its release
        keeps these numbers (:meth:`berg.core.layouts.ArtifactLayout.reliability`).
        """
        s = self._subject_arg(subject)
        full = self.layout.reliability(s)
        n_full = self.layout.output_space(s).n_outputs
        if full.n_outputs != n_full:
            raise ModelLoadError(
                f"{self.model_id} subject {s}: reliability from {full.source} has {full.n_outputs} values for "
                f"{n_full} outputs"
            )
        selected = full.select(self.selected_rows.get(s))
        flat = self.shape_outputs(s, selected.ncsnr[None]).reshape(-1)
        if flat.size == selected.n_outputs:
            return selected
        # outputs reduced after the readout (e.g. averaged repetitions): reduce reliability the same way
        nc = self.shape_outputs(s, selected.noise_ceiling[None]).reshape(-1)
        return Reliability(flat, nc, selected.n_repeats, selected.source)

    def provenance(self) -> dict[str, Any]:
        """Everything needed to say which numbers came from where."""
        checksums = self.layout.model_checksums(self.subjects)
        prov = {
            "model_id": self.model_id,
            "subjects": list(self.subjects),
            "selection": {str(s): sel.describe() for s, sel in self.selections.items()},
            "berg_version": __version__,
            "artifacts": checksums,
            "source": dict(self.spec.source),
            "backbone": self.extractor.provenance(),
            "nodes": list(self.extractor.nodes),
            "transform": self.extractor.transform.describe(),
            "options": dict(self.options),
            "output_space": {str(s): sp.to_dict() for s, sp in self.spaces.items()},
            "device": self.device,
        }
        if self.extractor.untrained_warning:
            prov["warning"] = self.extractor.untrained_warning
        return prov

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.model_id!r}, subjects={self.subjects}, "
            f"outputs={self.n_outputs}, device={self.device!r})"
        )


class _LazyRois(Mapping):
    """ROI indices read only if a selection asks for them (most loads never do)."""

    def __init__(self, layout: ArtifactLayout, subject: Any):
        self._layout, self._subject, self._rois = layout, subject, None

    def _get(self) -> dict[str, np.ndarray]:
        if self._rois is None:
            self._rois = self._layout.roi_indices(self._subject)
        return self._rois

    def __getitem__(self, key: str) -> np.ndarray:
        return self._get()[key]

    def __iter__(self):
        return iter(self._get())

    def __len__(self) -> int:
        return len(self._get())


def _select_heads(heads: Sequence[ReadoutHead], rows: np.ndarray | None) -> list[ReadoutHead]:
    """Push selected flat output rows down into each head's readout rows (rows must be sorted per head
    block only where the space requires it; channel lists may repeat rows)."""
    if rows is None:
        return list(heads)
    rows = np.asarray(rows, dtype=np.int64)
    if rows.size == 0:  # an empty ROI: (n, 0) outputs, as BERG returns; keep one head for the widths
        return [ReadoutHead(heads[0].projection, heads[0].readout.select(rows))]
    total = sum(h.readout.n_outputs for h in heads)
    if rows.size and (rows.min() < 0 or rows.max() >= total):
        raise ModelLoadError(f"selected rows fall outside the {total} outputs")
    if len(heads) == 1:
        return [ReadoutHead(heads[0].projection, heads[0].readout.select(rows))]
    # Keep the selection's row order: split it into runs that stay inside one head.
    starts = np.cumsum([0] + [h.readout.n_outputs for h in heads])
    owner = np.searchsorted(starts, rows, side="right") - 1
    out: list[ReadoutHead] = []
    cut = np.flatnonzero(np.diff(owner)) + 1
    for chunk in np.split(np.arange(rows.size), cut):
        if chunk.size == 0:
            continue
        hi = int(owner[chunk[0]])
        out.append(ReadoutHead(heads[hi].projection, heads[hi].readout.select(rows[chunk] - starts[hi])))
    return out
