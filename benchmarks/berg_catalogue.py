"""Benchmark BERG's catalogue models through berg vs BERG's own scikit-learn chain, at full size.

Builds (once) full-size replicas of one subject's files (creation_code/berg_catalogue/replica.py,
``fit=False``: random arrays with BERG's shapes and dtypes): NSD fsaverage ViT-B/32 (460,800 features
-> PCA 250 -> 2 x 163,842 vertices) and THINGS EEG2 ViT-B/32 (460,800 -> 4 x (PCA 250 -> 63 x 140)).
Then, each measurement in a fresh process (peak RSS = VmHWM of that process):

* ``readout``: batches of 100 random feature vectors -> outputs. berg: the loaded model's
  ``outputs_from_features`` (folded projection memory-mapped, made once beforehand); BERG: its loader's
  chain — ``np.load(allow_pickle=True)``, StandardScaler / PCA / LinearRegression with the stored
  attributes assigned, ``transform -> float32 -> predict -> float32`` per hemisphere or repetition;
* ``e2e``: 100 uint8 images -> ViT-B/32 (seeded random weights: pretrained weights cannot be
  downloaded here and do not change the cost) -> outputs, for both (BERG: torchvision
  ``create_feature_extractor`` + ``weights.transforms()`` + the same chain);
* ``kernel``: the readout and projection GEMMs in numpy and in torch, and the machine's float32 GEMM
  peak (2048^2), to choose the faster kernel per shape.

Usage::

    .venv/bin/python benchmarks/berg_catalogue.py --root /tmp/berg-bench-catalogue [--only readout] [--batches 3]
    .venv/bin/python benchmarks/berg_catalogue.py --smoke    # tiny replicas in a temporary folder
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _harness as H
import numpy as np

REPO = Path(__file__).resolve().parents[1]

F, K, NV, BATCH = 460_800, 250, 163_842, 100
N_TIMES = 140


def _smoke() -> None:
    """Small replicas (the same files and code path): 2,048 features -> 10 components -> the real outputs."""
    global F, K, BATCH
    F, K, BATCH = 2_048, 10, 8


IDS = {"nsd": "fmri-nsd_fsaverage-vit_b_32", "eeg": "eeg-things_eeg_2-vit_b_32"}


def _peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def prepare(root: Path) -> None:
    from berg.testing import write_catalogue_replica as write_replica

    for fam, family in (("nsd", "nsd_fsaverage"), ("eeg", "things_eeg_2")):
        marker = root / f".{fam}-done"
        if marker.exists():
            continue
        t0 = time.perf_counter()
        extra = {"channels": _channels(), "n_times": N_TIMES} if fam == "eeg" else {"n_vertices": NV}
        write_replica(
            root / "bucket",
            family,
            "vit_b_32",
            subjects=(1,),
            n_features=F,
            n_components=K,
            fit=False,
            keep_arrays=False,
            **extra,
        )
        marker.write_text("ok")
        print(f"replica {fam}: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    # fold the projections once (the derived artifact a first load makes), so measurements are warm
    for fam in IDS:
        _berg_model(root, fam)


def _channels() -> list[str]:
    from creation_code.berg_catalogue.replica import CHANNELS

    return list(CHANNELS)


def _berg_model(root: Path, fam: str):
    import berg

    client = berg.BERG(berg_dir=root / "bucket", cache_dir=root / "cache")
    return client.get_encoding_model(IDS[fam], subject=1, device="cpu", backbone_weights="untrained", batch_size=BATCH)


def _weights_path(root: Path, fam: str) -> Path:
    from creation_code.berg_catalogue.replica import PREFIXES

    family = "nsd_fsaverage" if fam == "nsd" else "things_eeg_2"
    return root / "bucket" / PREFIXES[(family, "vit_b_32")] / "encoding_models_weights" / "weights_subject-01.npy"


def _bergs_chain(root: Path, fam: str):
    """BERG's loader and inference (scikit-learn, attributes assigned as BERG does)."""
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LinearRegression
    from sklearn.preprocessing import StandardScaler

    w = np.load(_weights_path(root, fam), allow_pickle=True).item()  # our own replica (trusted), as BERG loads
    scaler = StandardScaler()
    for k, v in w["scaler_param"].items():
        setattr(scaler, k, v)

    def lin(d):
        lr = LinearRegression()
        lr.coef_, lr.intercept_, lr.n_features_in_ = d["coef_"], d["intercept_"], d["n_features_in_"]
        return lr

    if fam == "nsd":
        pca = PCA(n_components=K, random_state=20200220)
        for k, v in w["pca_param"].items():
            setattr(pca, k, v)
        lh, rh = lin(w["lh_reg_param"]), lin(w["rh_reg_param"])

        def run(x):
            z = pca.transform(scaler.transform(x)).astype(np.float32)
            return lh.predict(z).astype(np.float32), rh.predict(z).astype(np.float32)
    else:
        pcas = [w["pca_param"][f"rep-{r}"] for r in range(1, 5)]  # pickled PCA objects (np.load unpickled them)
        regs = [lin(w["reg_param"][f"rep-{r}"]) for r in range(1, 5)]

        def run(x):
            xs = scaler.transform(x)
            out = [
                reg.predict(p.transform(xs).astype(np.float32)).astype(np.float32).reshape(len(x), 63, 140)
                for p, reg in zip(pcas, regs)
            ]
            return np.stack(out).swapaxes(0, 1).astype(np.float32)

    return run


def _bergs_backbone():
    """BERG's feature extractor: ViT-B/32 (seeded random weights here) and its 12 block outputs."""
    import torch
    import torchvision
    from torchvision.models.feature_extraction import create_feature_extractor

    torch.manual_seed(0)
    net = torchvision.models.vit_b_32(weights=None).eval()
    return create_feature_extractor(net, [f"encoder.layers.encoder_layer_{i}.add_1" for i in range(12)])


def _time(fn, batches: int) -> float:
    fn()  # warm-up (first-touch of mapped pages, thread pools)
    t0 = time.perf_counter()
    for _ in range(batches):
        fn()
    return (time.perf_counter() - t0) / batches


def measure(root: Path, name: str, batches: int) -> dict:
    import torch

    side, kind, fam = name.split("-")
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    if kind == "readout":
        x = rng.standard_normal((BATCH, F), dtype=np.float32)
        if side == "berg":
            model = _berg_model(root, fam)
            xt = torch.from_numpy(x)

            def fn():
                with torch.inference_mode():
                    return model.outputs_from_features(xt)
        else:
            run = _bergs_chain(root, fam)
            backbone = _bergs_backbone()  # noqa: F841 - BERG's load_model builds it too (memory)

            def fn():
                return run(x)

        load = time.perf_counter() - t0
        per_batch = _time(fn, batches)
    else:  # e2e: images through ViT-B/32 and the readout
        imgs = rng.integers(0, 256, (BATCH, 224, 224, 3), dtype=np.uint8)
        if side == "berg":
            model = _berg_model(root, fam)
            load = time.perf_counter() - t0

            def fn():
                return model.encode(imgs, show_progress=False)
        else:
            import torchvision

            run = _bergs_chain(root, fam)
            ext = _bergs_backbone()
            tf = torchvision.models.ViT_B_32_Weights.IMAGENET1K_V1.transforms()
            load = time.perf_counter() - t0

            def fn():
                with torch.no_grad():
                    feats = ext(tf(torch.from_numpy(imgs).permute(0, 3, 1, 2)))
                    x = torch.cat([v.flatten(1) for v in feats.values()], 1).numpy()
                return run(x)

        per_batch = _time(fn, max(1, batches // 3))
    return {
        "name": name,
        "stimuli_per_s": BATCH / per_batch,
        "seconds_per_batch": per_batch,
        "load_s": load,
        "peak_rss_mb": _peak_rss_mb(),
        "threads": torch.get_num_threads(),
    }


def kernels() -> dict:
    import torch

    rng = np.random.default_rng(0)
    out = {}

    def gflops(fn, flops, reps=5):
        fn()
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        return flops * reps / (time.perf_counter() - t0) / 1e9

    out["peak_square_2048"] = H.peak_gflops()
    shapes = {
        f"readout_{BATCH}x{K}x{2 * NV}": (BATCH, K, 2 * NV),
        f"readout_eeg_{BATCH}x{K}x{63 * N_TIMES}": (BATCH, K, 63 * N_TIMES),
        f"projection_{BATCH}x{F}x{K}": (BATCH, F, K),
    }
    for name, (m, k, n) in shapes.items():
        x = rng.standard_normal((m, k), dtype=np.float32)
        w = rng.standard_normal((n, k), dtype=np.float32)  # stored (n_out, k) as the engine holds it
        b = rng.standard_normal(n, dtype=np.float32)
        xt, wt, bt = torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b)
        out[name] = {
            "numpy": gflops(lambda x=x, w=w, b=b: x @ w.T + b, 2 * m * k * n, 3),
            "torch_addmm": gflops(lambda xt=xt, wt=wt, bt=bt: torch.addmm(bt, xt, wt.T), 2 * m * k * n, 3),
            # the operand as the engine holds it: (k, n) contiguous (berg_catalogue's stacked readout)
            "torch_addmm_kn": gflops(
                lambda xt=xt, w_kn=wt.T.contiguous(), bt=bt: torch.addmm(bt, xt, w_kn), 2 * m * k * n, 3
            ),
            "numpy_kn": gflops(lambda x=x, w_kn=np.ascontiguousarray(w.T), b=b: x @ w_kn + b, 2 * m * k * n, 3),
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=Path("/tmp/berg-bench-catalogue"))
    ap.add_argument("--batches", type=int, default=3)
    ap.add_argument("--only", choices=["readout", "e2e", "kernel"], action="append")
    ap.add_argument("--families", nargs="+", choices=list(IDS), default=list(IDS))
    ap.add_argument("--measure", help=argparse.SUPPRESS)
    args = H.add_arguments(ap).parse_args()
    if args.smoke:
        _smoke()
        if args.root == ap.get_default("root"):
            args.root = Path(tempfile.mkdtemp(prefix="berg-bench-catalogue-smoke-"))
        # readouts of the NSD model only: a ViT-B/32 pass and the EEG replica would take minutes here
        args.batches, args.only, args.families = 1, args.only or ["readout"], ["nsd"]
    if args.measure:
        print(json.dumps(kernels() if args.measure == "kernel" else measure(args.root, args.measure, args.batches)))
        return
    rec = H.start("berg_catalogue", args, features=F, components=K, batch=BATCH)
    args.root.mkdir(parents=True, exist_ok=True)
    prepare(args.root)
    results = {}
    kinds = args.only or ["readout", "e2e", "kernel"]
    names = [
        f"{side}-{kind}-{fam}"
        for kind in ("readout", "e2e")
        if kind in kinds
        for fam in args.families
        for side in ("berg", "bergsk")
    ]
    if "kernel" in kinds:
        names.append("kernel")
    failed = []
    for name in names:
        argv = [sys.executable, __file__, "--root", str(args.root), "--batches", str(args.batches), "--measure", name]
        res = subprocess.run(argv + (["--smoke"] if args.smoke else []), capture_output=True, text=True, cwd=REPO)
        if res.returncode:
            H.log.error("%s failed:\n%s", name, res.stderr[-3000:])
            failed.append(name)
            continue
        results[name] = json.loads(res.stdout.strip().splitlines()[-1])
    for kind in ("readout", "e2e"):
        for fam in args.families:
            a, b = results.get(f"berg-{kind}-{fam}"), results.get(f"bergsk-{kind}-{fam}")
            if a and b:
                rec.figure(f"{kind}.{fam}.berg", a["stimuli_per_s"], "stim/s", peak_rss_mb=round(a["peak_rss_mb"]))
                rec.figure(f"{kind}.{fam}.berg_sklearn_float32", b["stimuli_per_s"], "stim/s")
                target = {"nsd": ">= 1.35", "eeg": ">= 1.5"}[fam] if kind == "readout" else None
                rec.figure(f"{kind}.{fam}.speed_over_berg", a["stimuli_per_s"] / b["stimuli_per_s"], "x", target=target)
                mem_target = "<= 0.75" if (kind, fam) == ("readout", "nsd") else None
                rec.figure(
                    f"{kind}.{fam}.memory_over_berg", a["peak_rss_mb"] / b["peak_rss_mb"], "x", target=mem_target
                )
    if "kernel" in results:
        peak = results["kernel"].pop("peak_square_2048")
        for shape, by_kernel in results["kernel"].items():
            for kernel, g in by_kernel.items():
                rec.figure(f"kernel.{shape}.{kernel}", g, "GFLOP/s", peak_used=peak)
            rec.figure(f"kernel.{shape}.best_of_peak", max(by_kernel.values()) / peak, "x", target=">= 0.75")
    if failed:
        raise SystemExit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
