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
  peak (2048^2), to choose the faster kernel per shape;
* ``subjects``: the 8 NSD subjects on the same 100 images. berg: one ``get_encoding_model(subject=[1..8])``
  and one ``encode`` (one backbone pass; per-subject projections and readouts streamed from the page
  cache); BERG: its loop of 8 ``get_encoding_model`` + ``encode`` (weights loaded, backbone built and run
  per subject). Also berg's peak RSS with 8 subjects over 1, and its streamed encode throughput over the
  same model held in memory (``BERG_STREAM_MB=0``). ``--smoke`` runs it on a small backbone
  (MobileNet-V3-small, 576 features), 4,096 vertices per hemisphere and ``BERG_STREAM_MB=1``, in seconds.

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
N_SUBJECTS, N_IMAGES = 8, 100  # the "many subjects, one pass" figure
SMOKE = False
# --smoke: a small backbone for the subjects figure (a ViT-B/32 pass would take minutes)
SMOKE_BACKBONE = {"builder": "torchvision.models.mobilenet_v3_small", "weights": None}
# readouts of 8,192 x 64 (2 MB) streamed at BERG_STREAM_MB=1: the streamed path, at smoke size
SMOKE_NV, SMOKE_K, SMOKE_SIZE, SMOKE_STREAM_MB = 4_096, 64, 64, "1"
SMOKE_ID = "bench-nsd-smoke"


def _smoke() -> None:
    """Small replicas (the same files and code path): 2,048 features -> 10 components -> the real outputs."""
    global F, K, BATCH, N_IMAGES, SMOKE
    F, K, BATCH, N_IMAGES, SMOKE = 2_048, 10, 8, 8, True


IDS = {"nsd": "fmri-nsd_fsaverage-vit_b_32", "eeg": "eeg-things_eeg_2-vit_b_32"}


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


def _weights_path(root: Path, fam: str, subject: int = 1, backbone: str = "vit_b_32") -> Path:
    from creation_code.berg_catalogue.replica import PREFIXES

    family = "nsd_fsaverage" if fam == "nsd" else "things_eeg_2"
    weights = f"encoding_models_weights/weights_subject-{subject:02d}.npy"
    return root / "bucket" / PREFIXES[(family, backbone)] / weights


def _bergs_chain(root: Path, fam: str, subject: int = 1, backbone: str = "vit_b_32"):
    """BERG's loader and inference (scikit-learn, attributes assigned as BERG does)."""
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LinearRegression
    from sklearn.preprocessing import StandardScaler

    # our own replica (trusted), loaded as BERG loads it
    w = np.load(_weights_path(root, fam, subject, backbone), allow_pickle=True).item()
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
        "peak_rss_mb": H.peak_rss_mb(),
        "threads": torch.get_num_threads(),
    }


# ------------------------------------------------------------------------------------------ many subjects
def _subjects_backbone() -> str:
    return "alexnet" if SMOKE else "vit_b_32"  # the smoke replica's folder (its backbone is swapped below)


def prepare_subjects(root: Path) -> None:
    """The NSD replica of all 8 subjects (and, for --smoke, a registry entry with a small backbone)."""
    from berg.testing import replica_entry
    from berg.testing import write_catalogue_replica as write_replica

    marker = root / (".nsd8-smoke-done" if SMOKE else ".nsd8-done")
    if not marker.exists():
        t0 = time.perf_counter()
        nv = SMOKE_NV if SMOKE else NV
        rep = write_replica(
            root / "bucket",
            "nsd_fsaverage",
            _subjects_backbone(),
            subjects=tuple(range(1, N_SUBJECTS + 1)),
            n_features=576 if SMOKE else F,
            n_components=SMOKE_K if SMOKE else K,
            n_vertices=nv,
            fit=False,
            keep_arrays=False,
        )
        if SMOKE:
            replica_entry(
                root,
                SMOKE_ID,
                "fmri-nsd_fsaverage-alexnet",
                source={"kind": "s3", "bucket": "absent-bucket", "prefix": rep.prefix, "manifest": False},
                subjects=list(range(1, N_SUBJECTS + 1)),
                selection={
                    "lengths": {"lh_vertices": nv, "rh_vertices": nv},
                    "n_outputs": {s: 2 * nv for s in range(1, N_SUBJECTS + 1)},
                },
                recipe={
                    "backbone": dict(SMOKE_BACKBONE),
                    "nodes": ["avgpool"],
                    "transform": {"size": [SMOKE_SIZE + 8, SMOKE_SIZE + 8], "crop": [SMOKE_SIZE, SMOKE_SIZE]},
                    "berg_catalogue": {"inference": {"resize_size": SMOKE_SIZE + 8, "crop_size": SMOKE_SIZE}},
                },
            )
        marker.write_text("ok")
        print(f"replica nsd, {N_SUBJECTS} subjects: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    _subjects_model(root, list(range(1, N_SUBJECTS + 1)))  # fold every subject's projection once (warm)


def _subjects_model(root: Path, subjects: list[int]):
    import berg

    kw = {"registry": root / "registry.yaml"} if SMOKE else {}
    client = berg.BERG(berg_dir=root / "bucket", cache_dir=root / "cache", **kw)
    model_id = SMOKE_ID if SMOKE else IDS["nsd"]
    # BERG's loop below encodes with BERG's inference transform (weights.transforms()): the same here, so
    # the checksum compares the same computation
    return client.get_encoding_model(
        model_id,
        subject=subjects,
        device="cpu",
        backbone_weights="untrained",
        batch_size=BATCH,
        preprocessing="berg_inference",
    )


def _bergs_subject_backbone():
    """BERG's feature extractor and preprocessing for the subjects figure (ViT-B/32, or the smoke backbone)."""
    import torch
    import torchvision
    from torchvision.models.feature_extraction import create_feature_extractor

    if not SMOKE:
        return _bergs_backbone(), torchvision.models.ViT_B_32_Weights.IMAGENET1K_V1.transforms()
    from torchvision.transforms._presets import ImageClassification

    torch.manual_seed(0)
    net = torchvision.models.mobilenet_v3_small(weights=None).eval()
    return create_feature_extractor(net, ["avgpool"]), ImageClassification(
        crop_size=SMOKE_SIZE, resize_size=SMOKE_SIZE + 8
    )


def measure_subjects(root: Path, name: str) -> dict:
    """One pass over the same images: ``berg`` (8 subjects, one encode), ``berg1`` (1 subject),
    ``bergmem`` (8 subjects held in memory) or ``bergsk`` (BERG's loop of 8 loads + encodes)."""
    import os

    import torch

    side = name.split("-")[0]
    size = SMOKE_SIZE if SMOKE else 224
    imgs = np.random.default_rng(0).integers(0, 256, (N_IMAGES, size, size, 3), dtype=np.uint8)
    subjects = list(range(1, N_SUBJECTS + 1))
    t0 = time.perf_counter()
    if side in ("berg", "berg1", "bergmem"):
        if side == "bergmem":
            os.environ["BERG_STREAM_MB"] = "0"
        elif SMOKE:
            os.environ["BERG_STREAM_MB"] = SMOKE_STREAM_MB
        model = _subjects_model(root, subjects[:1] if side == "berg1" else subjects)
        load = time.perf_counter() - t0
        out = model.encode(imgs, show_progress=False)
        streamed = model.streamed
        checksum = float(sum(np.abs(v[:, :100]).sum() for v in out.values()))
    else:
        load, streamed, checksum = 0.0, False, 0.0
        for s in subjects:  # BERG: get_encoding_model (weights + backbone) then encode, per subject
            t1 = time.perf_counter()
            run = _bergs_chain(root, "nsd", s, _subjects_backbone())
            ext, tf = _bergs_subject_backbone()
            load += time.perf_counter() - t1
            with torch.no_grad():
                ys = []
                for a in range(0, N_IMAGES, BATCH):
                    feats = ext(tf(torch.from_numpy(imgs[a : a + BATCH]).permute(0, 3, 1, 2)))
                    x = torch.cat([v.flatten(1) for v in feats.values()], 1).numpy()
                    ys.append(np.concatenate(run(x), axis=1))
            checksum += float(np.abs(np.concatenate(ys)[:, :100]).sum())
            del run, ext
    total = time.perf_counter() - t0
    return {
        "name": name,
        "seconds": total,
        "load_s": load,
        "encode_s": total - load,
        "images": N_IMAGES,
        "streamed": streamed,
        "checksum": checksum,
        "peak_rss_mb": H.peak_rss_mb(),
        "threads": torch.get_num_threads(),
    }


def subject_figures(rec, results: dict) -> None:
    """The figures of the subjects measurement (those whose runs succeeded)."""
    a, b = results.get("berg-subjects-nsd"), results.get("bergsk-subjects-nsd")
    one, mem = results.get("berg1-subjects-nsd"), results.get("bergmem-subjects-nsd")
    params = {"subjects": N_SUBJECTS, "images": N_IMAGES, "batch": BATCH}
    if a:
        rec.figure(
            "subjects.nsd.berg_one_pass",
            a["images"] / a["seconds"],
            "stim/s",
            load_s=round(a["load_s"], 2),
            peak_rss_mb=round(a["peak_rss_mb"]),
            streamed=a["streamed"],
            **params,
        )
    if b:
        rec.figure(
            "subjects.nsd.berg_sklearn_loop",
            b["images"] / b["seconds"],
            "stim/s",
            load_s=round(b["load_s"], 2),
            peak_rss_mb=round(b["peak_rss_mb"]),
            **params,
        )
    if a and b:
        rec.figure(
            "subjects.nsd.speed_over_berg_loop",
            b["seconds"] / a["seconds"],
            "x",
            target=">= 4",
            note="8 loads + 8 encodes vs one load + one encode, 100 images",
            **params,
        )
        rel = abs(a["checksum"] - b["checksum"]) / max(abs(b["checksum"]), 1e-30)
        rec.figure(
            "subjects.nsd.checksum_rel_diff_ppm",
            rel * 1e6,
            "ppm",
            target="<= 1000",
            note="same outputs: sum |y| over the first 100 vertices of every subject",
            **params,
        )
    if a and one:
        rec.figure(
            "subjects.nsd.rss_8_over_1",
            a["peak_rss_mb"] / one["peak_rss_mb"],
            "x",
            target="<= 1.5",
            note=f"peak RSS {a['peak_rss_mb']:.0f} MB (8 subjects) vs {one['peak_rss_mb']:.0f} MB (1)",
            **params,
        )
    if a and mem:
        rec.figure(
            "subjects.nsd.streamed_over_in_memory",
            mem["encode_s"] / a["encode_s"],
            "x",
            target=">= 0.9",
            note=f"encode throughput, streamed vs BERG_STREAM_MB=0 (peak RSS {a['peak_rss_mb']:.0f} vs "
            f"{mem['peak_rss_mb']:.0f} MB)",
            **params,
        )


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


def _measure(root: Path, name: str, batches: int) -> dict:
    """One measurement by name (``kernel``, ``<side>-subjects-nsd``, ``<side>-<readout|e2e>-<family>``)."""
    if name == "kernel":
        return kernels()
    if "-subjects-" in name:
        return measure_subjects(root, name)
    return measure(root, name, batches)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=Path("/tmp/berg-bench-catalogue"))
    ap.add_argument("--batches", type=int, default=3)
    ap.add_argument("--only", choices=["readout", "e2e", "kernel", "subjects"], action="append")
    ap.add_argument("--families", nargs="+", choices=list(IDS), default=list(IDS))
    ap.add_argument("--measure", help=argparse.SUPPRESS)
    args = H.add_arguments(ap).parse_args()
    if args.smoke:
        _smoke()
        if args.root == ap.get_default("root"):  # removed at exit
            scratch = tempfile.TemporaryDirectory(prefix="berg-bench-catalogue-smoke-")
            args.root = Path(scratch.name)
        # readouts of the NSD model and the subjects figure on a small backbone: a ViT-B/32 pass and the
        # EEG replica would take minutes here
        args.batches, args.only, args.families = 1, args.only or ["readout", "subjects"], ["nsd"]
    if args.measure:
        print(json.dumps(_measure(args.root, args.measure, args.batches)))
        return
    rec = H.start("berg_catalogue", args, features=F, components=K, batch=BATCH)
    args.root.mkdir(parents=True, exist_ok=True)
    kinds = args.only or ["readout", "e2e", "kernel", "subjects"]
    if set(kinds) & {"readout", "e2e"}:
        prepare(args.root)
    if "subjects" in kinds:
        prepare_subjects(args.root)
    results = {}
    names = [
        f"{side}-{kind}-{fam}"
        for kind in ("readout", "e2e")
        if kind in kinds
        for fam in args.families
        for side in ("berg", "bergsk")
    ]
    if "kernel" in kinds:
        names.append("kernel")
    if "subjects" in kinds:
        names += [f"{side}-subjects-nsd" for side in ("berg", "berg1", "bergmem", "bergsk")]
    failed = []
    for name in names:
        if args.smoke:  # in this process: a smoke run judges no peak RSS, and each child would import torch again
            results[name] = _measure(args.root, name, args.batches)
            continue
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
    subject_figures(rec, results)
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
