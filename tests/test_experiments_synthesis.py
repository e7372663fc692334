"""Differentiable encoders: objectives, gradient checks, synthesis loops (berg.experiments.synthesis)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from berg.errors import InvalidParameterError  # noqa: E402
from berg.experiments import gradient_check, roi_contrast, roi_mean, synthesize_images, synthesize_latent  # noqa: E402

ROI_A, ROI_B = np.arange(0, 8), np.arange(8, 16)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # tiny tensors: intra-op threads only contend on a loaded 2-core CI box (100x slower)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_encoder(dtype=torch.float32, seed=0):
    """Conv backbone + linear readout to 16 outputs: a stand-in for a berg model's forward."""
    torch.manual_seed(seed)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 5, stride=2),
        torch.nn.Tanh(),
        torch.nn.Conv2d(8, 8, 3, stride=2),
        torch.nn.Tanh(),
        torch.nn.AdaptiveAvgPool2d(4),
        torch.nn.Flatten(),
        torch.nn.Linear(128, 16),
    )
    return net.to(dtype).eval()


def test_import_experiments_is_light():
    code = "import sys, berg.experiments as e; e.__all__; print('torch' in sys.modules, 'scipy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_objectives():
    y = torch.arange(40, dtype=torch.float64).reshape(2, 20)
    assert torch.allclose(roi_mean(ROI_A)(y), y[:, :8].mean(1))
    mask = np.zeros(20, bool)
    mask[ROI_B] = True
    assert torch.allclose(roi_mean(mask)(y), y[:, 8:16].mean(1))
    assert torch.allclose(roi_contrast(ROI_A, ROI_B, weight=0.5)(y), y[:, :8].mean(1) - 0.5 * y[:, 8:16].mean(1))
    per_subject = {1: y, 2: -y}
    assert torch.allclose(roi_mean(ROI_A, subject=2)(per_subject), -y[:, :8].mean(1))
    with pytest.raises(InvalidParameterError, match="subject="):
        roi_mean(ROI_A)(per_subject)
    with pytest.raises(InvalidParameterError, match="non-empty"):
        roi_mean([])


def test_gradients_match_finite_differences():
    net = tiny_encoder(torch.float64)
    x = torch.rand(2, 3, 24, 24, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    check = gradient_check(net, x, roi_contrast(ROI_A, ROI_B), eps=1e-5, n_directions=6)
    assert check.max_relative_error < 1e-6
    assert np.abs(check.autograd).min() > 0  # non-trivial directional derivatives


def test_gradient_check_catches_a_wrong_backward():
    class WrongSquare(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return x**2

        @staticmethod
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            return g * 3 * x  # should be 2 x

    x = torch.rand(1, 5, dtype=torch.float64) + 0.5
    assert gradient_check(WrongSquare.apply, x, eps=1e-6).max_relative_error > 0.1
    assert gradient_check(lambda t: t**2, x, eps=1e-6).max_relative_error < 1e-8


def test_pixel_synthesis_drives_the_roi():
    net = tiny_encoder()
    objective = roi_contrast(ROI_A, ROI_B)
    res = synthesize_images(net, objective, shape=(2, 3, 32, 32), steps=40, lr=0.05, jitter=2, seed=0)
    assert res.images.shape == (2, 3, 32, 32)
    assert float(res.images.min()) >= 0 and float(res.images.max()) <= 1
    # far better than where it started, and than random images
    rand = torch.rand(100, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        random_scores = objective(net(rand)).numpy()
    assert (res.objective > res.initial + 0.05).all()
    assert (res.objective > np.percentile(random_scores, 99.5)).all()
    assert res.history.shape == (40, 2)
    u8 = res.to_uint8()
    assert u8.shape == (2, 32, 32, 3) and u8.dtype == np.uint8
    again = synthesize_images(net, objective, shape=(2, 3, 32, 32), steps=40, lr=0.05, jitter=2, seed=0)
    assert torch.equal(again.images, res.images)  # seeded
    assert all(p.grad is None for p in net.parameters())  # the model is left untouched


def test_blur_prior_smooths_images():
    net = tiny_encoder()
    kw = dict(shape=(1, 3, 32, 32), steps=40, lr=0.1, jitter=0, seed=0)
    sharp = synthesize_images(net, roi_mean(ROI_A), blur_every=0, **kw).images
    smooth = synthesize_images(net, roi_mean(ROI_A), blur_every=1, blur_sigma=1.0, **kw).images

    def roughness(img):
        return float((img[..., 1:, :] - img[..., :-1, :]).abs().mean() + (img[..., 1:] - img[..., :-1]).abs().mean())

    assert roughness(smooth) < 0.7 * roughness(sharp)


def test_latent_synthesis_with_a_generator():
    net = tiny_encoder()
    torch.manual_seed(3)
    gen = torch.nn.Sequential(torch.nn.Linear(10, 3 * 32 * 32), torch.nn.Sigmoid(), torch.nn.Unflatten(1, (3, 32, 32)))
    z0 = torch.randn(3, 10, generator=torch.Generator().manual_seed(0))
    res = synthesize_latent(net, roi_mean(ROI_A), gen, z0, steps=80, lr=0.1, latent_penalty=1e-3)
    assert res.latents.shape == (3, 10) and res.images.shape == (3, 3, 32, 32)
    assert (res.objective > res.initial).all()
    with torch.no_grad():
        assert np.allclose(roi_mean(ROI_A)(net(gen(res.latents))).numpy(), res.objective, atol=1e-6)


def test_bad_parameters():
    net = tiny_encoder()
    with pytest.raises(InvalidParameterError, match="steps"):
        synthesize_images(net, roi_mean(ROI_A), shape=(1, 3, 16, 16), steps=0)
    with pytest.raises(InvalidParameterError, match="value_range"):
        synthesize_images(net, roi_mean(ROI_A), shape=(1, 3, 16, 16), value_range=(1, 0))
    with pytest.raises(InvalidParameterError, match=r"one value per stimulus"):
        synthesize_images(net, lambda y: y.sum(), shape=(1, 3, 16, 16), steps=1)


@pytest.fixture(scope="module")
def berg_model(tmp_path_factory):
    """A real berg model (berg.testing.sklearn_toy: untrained ResNet-18 + scaler/PCA + readout)."""
    import berg
    from berg.testing.sklearn_toy import MODEL_ID, build

    synth = build(tmp_path_factory.mktemp("synthetic"))
    client = berg.BERG(
        berg_dir=synth.berg_dir, cache_dir=tmp_path_factory.mktemp("cache"), offline=True, registry=synth.registry
    )
    model = client.get_encoding_model(MODEL_ID, subject=1, device="cpu", backbone_weights="untrained")
    assert callable(model.forward_pixels), "linear berg models are differentiable (berg.core.engine.forward_pixels)"
    return model, synth


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::UserWarning")  # the untrained-backbone warning, expected here
def test_berg_model_forward_gradients_and_synthesis(berg_model):
    """Autograd through a real berg model (float32) against finite differences in float64.

    Finite differences of a float32 ResNet are dominated by rounding (a few % error), so they are taken
    on a float64 replica of the same chain: a double copy of the model's backbone and the model's own
    affine projection+readout, recovered through ``outputs_from_features`` (identity and zero features).
    """
    import copy

    model, synth = berg_model
    rois = model.get_metadata()["rois"]
    objective = roi_contrast(rois["A"], rois["B"])
    pixels = torch.as_tensor(synth.test_images[:2]).permute(0, 3, 1, 2).float() / 255
    smooth = torch.nn.functional.interpolate(pixels, size=(64, 64), mode="bilinear", antialias=True)
    u8 = (smooth * 255).round().byte().permute(0, 2, 3, 1).numpy()  # 64 x 64: the model's input size
    pixels = torch.as_tensor(u8).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        y = model.forward_pixels(pixels)
    assert y.shape == (2, 30)
    # the differentiable path gives what encode gives (uint8 -> berg's own preprocessing)
    assert np.allclose(y.numpy(), model.encode(u8, show_progress=False), atol=1e-3 * float(y.abs().max()))

    # float64 replica: backbone copy + the affine map features -> outputs
    net = copy.deepcopy(model.extractor.network).double().eval()  # a deep copy of an fx graph is in train mode
    n_feat = model.extractor.forward(pixels[:1]).shape[1]
    with torch.no_grad():
        eye = torch.eye(n_feat)
        b = model.outputs_from_features(torch.zeros(1, n_feat))[0].double()
        w = model.outputs_from_features(eye)[0].double() - b
    cfg = model.extractor.transform.describe()
    mean = torch.tensor(cfg["mean"], dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor(cfg["std"], dtype=torch.float64).view(1, 3, 1, 1)

    def replica(x):
        out = net((x - mean) / std)
        return torch.cat([out[n].flatten(1) for n in model.extractor.nodes], 1) @ w + b

    # off the uint8 grid: quantised images have repeated values, i.e. max-pool ties (kinks) within eps
    x = smooth[:1].double()
    with torch.no_grad():
        assert torch.allclose(replica(x).float(), model.forward_pixels(smooth[:1]), atol=1e-3)
    ref = gradient_check(replica, x, objective, eps=1e-6, n_directions=4, seed=1)
    assert ref.max_relative_error < 1e-5  # the replica's autograd = its finite differences
    x32 = smooth[:1].clone().requires_grad_(True)
    (g,) = torch.autograd.grad(objective(model.forward_pixels(x32)).sum(), x32)
    gen = torch.Generator().manual_seed(1)
    for fd in ref.finite_difference:  # the same seeded directions as gradient_check
        v = torch.randn(x.shape, generator=gen, dtype=torch.float64)
        v /= v.norm()
        assert float((g.double() * v).sum()) == pytest.approx(fd, rel=1e-3)

    res = synthesize_images(model.forward_pixels, objective, shape=(1, 3, 64, 64), steps=8, lr=0.05, jitter=2)
    assert res.objective[0] > res.initial[0]
