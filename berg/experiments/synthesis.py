"""Differentiable encoders as building blocks: ROI objectives and a minimal synthesis loop.

berg's linear models are differentiable end to end (backbone -> projection -> readout), so a model's
``forward(x)`` can be used like any torch module: this module supplies

* scalar objectives on predicted responses: :func:`roi_mean` (mean over an ROI's outputs, as in
  NeuroGen, Gu et al. 2022, NeuroImage 247:118812, and BrainDiVE, Luo et al. 2023, NeurIPS) and
  :func:`roi_contrast` (one ROI minus another);
* :func:`synthesize_images`: gradient ascent on pixels with the two classic image priors of feature
  visualisation (Olah et al. 2017, "Feature Visualization", Distill): random jitter (translations)
  each step and a Gaussian blur every few steps;
* :func:`synthesize_latent`: gradient ascent on the latent of a user's generator (a GAN, a VAE
  decoder, a diffusion model's deterministic decoder), the approach of NeuroGen;
* :func:`gradient_check`: autograd against central finite differences, to check a ``forward``.

These are a starting point, not a product: the loop is short enough to copy and change.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from berg.errors import InvalidParameterError

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = [
    "roi_mean",
    "roi_contrast",
    "synthesize_images",
    "synthesize_latent",
    "gradient_check",
    "SynthesisResult",
    "GradientCheck",
]

log = logging.getLogger(__name__)

Objective = Callable[[Any], "torch.Tensor"]


def _responses_of(y: Any, subject: Any) -> torch.Tensor:
    """The ``(B, n_outputs)`` tensor of ``subject`` from a tensor or a ``{subject: tensor}`` dict."""
    if isinstance(y, Mapping):
        if subject is None:
            if len(y) != 1:
                raise InvalidParameterError(f"forward returned subjects {list(y)}; pass subject= to the objective")
            return next(iter(y.values()))
        if subject not in y:
            raise InvalidParameterError(f"subject {subject!r} not in the forward output; it has {list(y)}")
        return y[subject]
    return y


def _index(indices: Any, name: str) -> np.ndarray:
    idx = np.asarray(indices)
    if idx.dtype == bool:
        idx = np.flatnonzero(idx)
    if idx.ndim != 1 or idx.size == 0:
        raise InvalidParameterError(f"{name} must be a non-empty 1-D array of output indices")
    return idx.astype(np.int64)


def roi_mean(indices: Sequence[int] | np.ndarray, *, subject: Any = None) -> Objective:
    """Objective: the mean predicted response over an ROI's outputs, per stimulus.

    Parameters
    ----------
    indices : int array or boolean mask
        The ROI's outputs (``model.get_metadata()["rois"][name]``).
    subject : optional
        Which subject when ``forward`` returns ``{subject: tensor}``.

    Returns
    -------
    callable
        ``objective(y) -> (B,) tensor``, differentiable.
    """
    idx = _index(indices, "indices")

    def objective(y: Any) -> torch.Tensor:
        import torch

        r = _responses_of(y, subject)
        r = r.flatten(1)  # outputs index the flattened space, e.g. (B, channels, times) -> (B, n)
        return r[:, torch.as_tensor(idx, device=r.device)].mean(dim=1)

    objective.__name__ = "roi_mean"
    return objective


def roi_contrast(
    positive: Sequence[int] | np.ndarray,
    negative: Sequence[int] | np.ndarray,
    *,
    weight: float = 1.0,
    subject: Any = None,
) -> Objective:
    """Objective: ``mean(positive ROI) - weight * mean(negative ROI)`` per stimulus.

    Use it to drive one region while holding another down (e.g. FFA minus PPA).
    """
    pos, neg = roi_mean(positive, subject=subject), roi_mean(negative, subject=subject)

    def objective(y: Any) -> torch.Tensor:
        return pos(y) - weight * neg(y)

    objective.__name__ = "roi_contrast"
    return objective


@dataclass
class SynthesisResult:
    """Result of :func:`synthesize_images` / :func:`synthesize_latent`.

    Attributes
    ----------
    images : torch.Tensor
        ``(B, 3, H, W)`` float, in ``value_range``, on the CPU.
    objective : (B,) array
        The objective of the final images (no jitter).
    history : (steps, B) array
        Objective at each step (on the jittered inputs).
    initial : (B,) array
        Objective of the starting images.
    latents : torch.Tensor or None
        Final latents (:func:`synthesize_latent`).
    value_range : (float, float)
    """

    images: Any
    objective: np.ndarray
    history: np.ndarray
    initial: np.ndarray
    latents: Any = None
    value_range: tuple[float, float] = (0.0, 1.0)

    def to_uint8(self) -> np.ndarray:
        """Images as ``(B, H, W, 3)`` uint8 (what ``berg.encode`` accepts)."""
        lo, hi = self.value_range
        x = (self.images.detach().float().cpu().numpy() - lo) / (hi - lo)
        return np.clip(np.round(x * 255), 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)


def _device_of(forward: Any, device: str | None) -> str:
    if device is not None:
        from berg.experiments._inputs import resolve_device

        return resolve_device(device)
    return str(getattr(forward, "device", "cpu"))  # berg models carry their device


def _gaussian_kernel(sigma: float, dtype: Any, device: Any) -> torch.Tensor:
    import torch

    radius = max(1, int(np.ceil(3 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=dtype, device=device)
    k = torch.exp(-(x**2) / (2 * sigma**2))
    return k / k.sum()


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur over the last two axes (reflect padding), any leading shape."""
    import torch.nn.functional as F

    k = _gaussian_kernel(sigma, x.dtype, x.device)
    r = (len(k) - 1) // 2
    shape = x.shape
    flat = x.reshape(-1, 1, shape[-2], shape[-1])
    if min(shape[-2:]) <= r:
        return x  # too small to blur meaningfully
    flat = F.conv2d(F.pad(flat, (r, r, 0, 0), mode="reflect"), k.view(1, 1, 1, -1))
    flat = F.conv2d(F.pad(flat, (0, 0, r, r), mode="reflect"), k.view(1, 1, -1, 1))
    return flat.reshape(shape)


def _jitter(x: torch.Tensor, amount: int, gen: torch.Generator) -> torch.Tensor:
    import torch

    if amount <= 0:
        return x
    dy, dx = (int(v) for v in torch.randint(-amount, amount + 1, (2,), generator=gen))
    return torch.roll(x, shifts=(dy, dx), dims=(-2, -1))


def _check_common(steps: int, lr: float) -> None:
    if steps < 1:
        raise InvalidParameterError(f"steps must be >= 1, not {steps!r}")
    if not lr > 0:
        raise InvalidParameterError(f"lr must be > 0, not {lr!r}")


def _values(objective: Objective, y: Any) -> torch.Tensor:
    v = objective(y)
    if v.ndim != 1:
        raise InvalidParameterError(
            f"the objective must return one value per stimulus (B,); got shape {tuple(v.shape)}"
        )
    return v


def synthesize_images(
    forward: Callable[[torch.Tensor], Any],
    objective: Objective,
    *,
    init: torch.Tensor | np.ndarray | None = None,
    shape: Sequence[int] = (1, 3, 224, 224),
    steps: int = 256,
    lr: float = 0.05,
    jitter: int = 8,
    blur_sigma: float = 1.0,
    blur_every: int = 4,
    value_range: tuple[float, float] = (0.0, 1.0),
    device: str | None = None,
    seed: int = 0,
) -> SynthesisResult:
    """Images that maximise ``objective(forward(images))`` by gradient ascent on the pixels.

    Each step: translate the images by a random offset of up to ``jitter`` pixels (torch.roll), take
    Adam steps on ``-sum(objective)`` (each image is optimised independently), clamp to
    ``value_range``; every ``blur_every`` steps blur the images with a Gaussian of ``blur_sigma``
    pixels. Jitter and blur are the classic priors against adversarial high-frequency patterns.

    Parameters
    ----------
    forward : callable
        ``tensor (B, 3, H, W) -> responses (B, n_outputs)`` (or ``{subject: tensor}``), differentiable:
        a berg model's ``forward``, or any torch module.
    objective : callable
        ``responses -> (B,)`` (:func:`roi_mean`, :func:`roi_contrast`, or your own).
    init : tensor or array, optional
        Starting images ``(B, 3, H, W)`` in ``value_range``; default: uniform noise of ``shape``
        around the middle of the range (seeded).
    steps, lr : int, float
        Adam steps and learning rate (relative to the width of ``value_range``).
    jitter : int
        Largest random translation in pixels (0: none).
    blur_sigma, blur_every : float, int
        Gaussian blur prior (``blur_every=0``: none).
    value_range : (float, float)
        Pixel range ``forward`` expects (e.g. (0, 1), or (0, 255)).
    device : str, optional
        Default: ``forward.device`` when it has one, else "cpu".
    seed : int
        Seeds the initial noise and the jitter.

    Returns
    -------
    SynthesisResult
    """
    import torch

    _check_common(steps, lr)
    lo, hi = (float(v) for v in value_range)
    if not hi > lo:
        raise InvalidParameterError(f"value_range must be (low, high) with high > low, not {value_range!r}")
    dev = _device_of(forward, device)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    if init is None:
        x0 = lo + (hi - lo) * (0.5 + 0.1 * (torch.rand(tuple(shape), generator=gen) - 0.5))
    else:
        x0 = torch.as_tensor(np.asarray(init) if isinstance(init, np.ndarray) else init).detach().clone()
    x = x0.to(device=dev, dtype=torch.float32 if not x0.is_floating_point() else x0.dtype)
    x.requires_grad_(True)
    opt = torch.optim.Adam([x], lr=lr * (hi - lo))
    with torch.no_grad():
        initial = _values(objective, forward(x)).detach().cpu().numpy()
    history = []
    for step in range(steps):
        opt.zero_grad(set_to_none=True)
        values = _values(objective, forward(_jitter(x, jitter, gen)))
        # gradients for the pixels only: the model's weights get no .grad and no weight-gradient work
        (-values.sum()).backward(inputs=[x])
        opt.step()
        with torch.no_grad():
            if blur_every and blur_sigma > 0 and (step + 1) % blur_every == 0:
                x.copy_(_blur(x, blur_sigma))
            x.clamp_(lo, hi)
        history.append(values.detach().cpu().numpy())
    with torch.no_grad():
        final = _values(objective, forward(x)).detach().cpu().numpy()
    log.info("synthesis: objective %s -> %s in %d steps", initial.round(4), final.round(4), steps)
    return SynthesisResult(x.detach().cpu(), final, np.stack(history), initial, None, (lo, hi))


def synthesize_latent(
    forward: Callable[[torch.Tensor], Any],
    objective: Objective,
    generator: Callable[[torch.Tensor], torch.Tensor],
    latent: torch.Tensor | np.ndarray,
    *,
    steps: int = 256,
    lr: float = 0.05,
    jitter: int = 0,
    latent_penalty: float = 0.0,
    value_range: tuple[float, float] = (0.0, 1.0),
    device: str | None = None,
    seed: int = 0,
) -> SynthesisResult:
    """Latents of a generator whose images maximise ``objective(forward(generator(z)))``.

    Parameters
    ----------
    forward, objective :
        As in :func:`synthesize_images`.
    generator : callable
        ``latents -> images (B, 3, H, W)`` in ``value_range`` (differentiable; frozen, it is not
        trained here).
    latent : (B, ...) tensor or array
        Starting latents.
    steps, lr : int, float
        Adam steps and learning rate on the latents.
    jitter : int
        Random translation of the generated images (pixels).
    latent_penalty : float
        Weight of ``mean(z**2)`` subtracted from the objective, to keep latents where the generator
        was trained (e.g. near a Gaussian prior).
    value_range, device, seed :
        As in :func:`synthesize_images`.

    Returns
    -------
    SynthesisResult
        With ``latents`` and the images they generate.
    """
    import torch

    _check_common(steps, lr)
    dev = _device_of(forward, device)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    z = torch.as_tensor(np.asarray(latent) if isinstance(latent, np.ndarray) else latent).detach().clone()
    z = z.to(dev).float() if not z.is_floating_point() else z.to(dev)
    z.requires_grad_(True)
    opt = torch.optim.Adam([z], lr=lr)

    def penalty(zz: torch.Tensor) -> torch.Tensor:
        return latent_penalty * zz.pow(2).flatten(1).mean(1)

    with torch.no_grad():
        initial = _values(objective, forward(generator(z))).cpu().numpy()
    history = []
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        values = _values(objective, forward(_jitter(generator(z), jitter, gen)))
        (-(values - penalty(z)).sum()).backward(inputs=[z])  # the generator and model stay frozen
        opt.step()
        history.append(values.detach().cpu().numpy())
    with torch.no_grad():
        images = generator(z)
        final = _values(objective, forward(images)).cpu().numpy()
    return SynthesisResult(
        images.detach().cpu(),
        final,
        np.stack(history),
        initial,
        z.detach().cpu(),
        tuple(float(v) for v in value_range),  # type: ignore[arg-type]
    )


@dataclass(frozen=True)
class GradientCheck:
    """Result of :func:`gradient_check`.

    Attributes
    ----------
    autograd : (n_directions,) array
        Directional derivatives from autograd, ``<grad f(x), v>``.
    finite_difference : (n_directions,) array
        ``(f(x + eps v) - f(x - eps v)) / (2 eps)``.
    max_relative_error : float
        ``max |a - fd| / max(|fd|, |a|, tiny)`` over directions.
    """

    autograd: np.ndarray
    finite_difference: np.ndarray
    max_relative_error: float


def gradient_check(
    forward: Callable[[torch.Tensor], Any],
    x: torch.Tensor,
    objective: Objective | None = None,
    *,
    eps: float = 1e-3,
    n_directions: int = 4,
    seed: int = 0,
) -> GradientCheck:
    """Compare autograd gradients of ``sum(objective(forward(x)))`` with central finite differences.

    Random unit directions ``v`` (seeded) avoid one finite difference per input element. Use float64
    inputs and modules for tight checks (relative error ~1e-8); in float32, choose ``eps`` around
    1e-2 of the input scale and expect ~1e-3.

    Parameters
    ----------
    forward : callable
        Differentiable ``tensor -> tensor`` (or ``{subject: tensor}`` with an objective).
    x : tensor
        Input at which to check.
    objective : callable, optional
        ``responses -> (B,)``; default: the sum of all outputs.
    eps : float
        Finite-difference step along each unit direction.
    n_directions : int
    seed : int

    Returns
    -------
    GradientCheck
    """
    import torch

    def f(inp: torch.Tensor) -> torch.Tensor:
        y = forward(inp)
        return (objective(y) if objective is not None else _responses_of(y, None)).sum()

    gen = torch.Generator(device="cpu").manual_seed(seed)
    x = x.detach().clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(f(x), x)
    auto, fd = [], []
    with torch.no_grad():
        for _ in range(n_directions):
            v = torch.randn(x.shape, generator=gen, dtype=x.dtype).to(x.device)
            v /= v.norm()
            auto.append(float((grad * v).sum()))
            fd.append(float((f(x + eps * v) - f(x - eps * v)) / (2 * eps)))
    a, d = np.array(auto), np.array(fd)
    scale = np.maximum(np.maximum(np.abs(a), np.abs(d)), 1e-12)
    return GradientCheck(a, d, float(np.max(np.abs(a - d) / scale)))
