"""Convert img2fmri 1.0's wheel (PyPI) into a berg-native artifact.

What the wheel holds (img2fmri 1.0 on PyPI): 15 scikit-learn ``Ridge`` pickles
(``img2fmri/models/subj{1,2,3}_{ROI}_model.pkl``), LH/RH boolean ROI masks on each subject's 2 mm
functional grid, FSL warps to MNI, and smoothed MNI masks. The pickles are read with berg's
restricted pickle interpreter, admitting only a ``Ridge`` stand-in that keeps its state (never a
real unpickler); only ``coef_`` and ``intercept_`` are used.

Artifact written (berg format, see docs/architecture.md):

* ``readout/sub-0S.safetensors``: rows ROI by ROI (EarlyVis, OPA, LOC, RSC, PPA), in each the LH
  mask's voxels then the RH mask's, exactly img2fmri's row order;
* ``metadata/sub-0S.{json,safetensors}``: ROI index sets (``EarlyVis`` = LH + RH rows, ``LHEarlyVis``,
  ``RHEarlyVis``...), ``voxel_ijk`` (img2fmri's C order of each mask's voxels) and
  ``voxel_ijk_fortran`` (column-major order), the functional grid's shape and affine;
* ``mni/`` (when the MNI map is computed): per subject the nearest-neighbour index from each MNI152
  2 mm voxel to a functional voxel, and the sigma = 1 smoothed-mask overlap used for z-scoring.
"""

from __future__ import annotations

import logging
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from berg.errors import ArtifactError
from berg.fsutil import sha256_file

__all__ = ["convert_wheel", "WHEEL_SHA256", "ROIS", "CONVERTER_VERSION", "read_ridge", "extract_wheel"]

log = logging.getLogger(__name__)

WHEEL_SHA256 = "b830383d191c4edcae0eef54e045bb6290abbc5b5e436ae674951bff8fb6d6be"
CONVERTER_VERSION = 1
ROIS = ("EarlyVis", "OPA", "LOC", "RSC", "PPA")
SUBJECTS = (1, 2, 3)
N_FEATURES = 512
MNI_SHAPE = (91, 109, 91)
MNI_AFFINE = np.array([[-2.0, 0, 0, 90], [0, 2, 0, -126], [0, 0, 2, -72], [0, 0, 0, 1]])


def read_ridge(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """``coef_`` (n_vox, 512) and ``intercept_`` (n_vox,) of a pickled ``Ridge``, read safely."""
    from berg.store.legacy import StateOnly, safe_unpickle

    class RidgeStandIn(StateOnly):
        pass

    obj = safe_unpickle(data, extra_globals={("sklearn.linear_model._ridge", "Ridge"): RidgeStandIn})
    if not isinstance(obj, RidgeStandIn) or not isinstance(obj.state, dict):
        raise ArtifactError("pickle does not hold a Ridge estimator")
    coef = np.asarray(obj.state.get("coef_"), dtype=np.float32)
    intercept = np.asarray(obj.state.get("intercept_"), dtype=np.float32).reshape(-1)
    if coef.ndim != 2 or coef.shape[1] != N_FEATURES or intercept.shape != (coef.shape[0],):
        raise ArtifactError(f"unexpected Ridge shapes coef_ {coef.shape}, intercept_ {intercept.shape}")
    return coef, intercept


def extract_wheel(wheel: Path, dest: Path) -> Path:
    """Unzip the wheel (data files only are used; nothing from it is imported or run)."""
    with zipfile.ZipFile(wheel) as z:
        for name in z.namelist():
            if name.startswith("img2fmri/") and not name.endswith(".py") and ".." not in name:
                z.extract(name, dest)
    return dest / "img2fmri"


def _mask(root: Path, subject: int, hemi: str, roi: str):
    import nibabel as nib

    img = nib.load(
        root
        / "derivatives"
        / "bool_masks"
        / f"derivatives_spm_sub-CSI{subject}_sub-CSI{subject}_mask-{hemi}{roi}.nii.gz"
    )
    return np.asarray(img.dataobj) > 0, img.affine


def _ijk(mask: np.ndarray, order: str) -> np.ndarray:
    from berg.core.spaces import mask_voxel_indices

    return np.stack(np.unravel_index(mask_voxel_indices(mask, order), mask.shape), axis=1)


def convert_wheel(wheel_path: str | Path, out_dir: str | Path, *, with_mni: bool = True) -> Path:
    """Write the berg artifact of ``fmri-bold5000-resnet18`` from img2fmri's wheel into ``out_dir``."""

    from berg.store.artifacts import ArtifactWriter

    wheel_path = Path(wheel_path)
    digest = sha256_file(wheel_path)
    if digest != WHEEL_SHA256:
        raise ArtifactError(f"{wheel_path.name} has sha256 {digest}, expected the pinned {WHEEL_SHA256}")
    writer = ArtifactWriter(Path(out_dir), "fmri-bold5000-resnet18")
    with tempfile.TemporaryDirectory() as tmp:
        root = extract_wheel(wheel_path, Path(tmp))
        with zipfile.ZipFile(wheel_path) as z:
            pickles = {name: z.read(name) for name in z.namelist() if name.endswith("_model.pkl")}
        from tqdm.auto import tqdm

        from berg.env import progress_enabled

        # the first load converts the wheel (a minute or more, mostly FNIRT): show it, unless BERG_QUIET / `berg -q`
        bar = tqdm(
            total=len(SUBJECTS) + int(with_mni),
            desc="converting img2fmri 1.0",
            unit="step",
            disable=not progress_enabled(),
            leave=False,
        )
        for s in SUBJECTS:
            weights, biases, rois, ijk_c, ijk_f = [], [], {}, [], []
            start = 0
            grid_affine = None
            for roi in ROIS:
                coef, intercept = read_ridge(pickles[f"img2fmri/models/subj{s}_{roi}_model.pkl"])
                rows = {}
                for hemi in ("LH", "RH"):
                    mask, affine = _mask(root, s, hemi, roi)
                    grid_affine = affine if grid_affine is None else grid_affine
                    n = int(mask.sum())
                    rows[hemi] = np.arange(start, start + n)
                    ijk_c.append(_ijk(mask, "c"))
                    ijk_f.append(_ijk(mask, "fortran"))
                    start += n
                    grid_shape = mask.shape
                if coef.shape[0] != len(rows["LH"]) + len(rows["RH"]):
                    raise ArtifactError(
                        f"subject {s} {roi}: {coef.shape[0]} Ridge outputs but the LH+RH masks have "
                        f"{len(rows['LH']) + len(rows['RH'])} voxels"
                    )
                rois[roi] = np.concatenate([rows["LH"], rows["RH"]])
                rois[f"LH{roi}"], rois[f"RH{roi}"] = rows["LH"], rows["RH"]
                weights.append(coef)
                biases.append(intercept)
            label = f"sub-{s:02d}"
            writer.add_tensors(
                f"readout/{label}.safetensors", {"weight": np.concatenate(weights), "bias": np.concatenate(biases)}
            )
            tensors = {f"roi/{k}": v.astype(np.int64) for k, v in rois.items()}
            tensors["voxel_ijk"] = np.concatenate(ijk_c).astype(np.int32)
            tensors["voxel_ijk_fortran"] = np.concatenate(ijk_f).astype(np.int32)
            writer.add_tensors(f"metadata/{label}.safetensors", tensors)
            writer.add_json(
                f"metadata/{label}.json",
                {
                    "n_outputs": int(start),
                    "output_space": {
                        "kind": "volume",
                        "shape": list(grid_shape),
                        "affine": np.asarray(grid_affine).tolist(),
                    },
                    "rois": list(rois),
                    "info": {
                        "subject": f"CSI{s}",
                        "roi_order": list(ROIS),
                        "row_order": "ROI by ROI; LH mask voxels then RH, each in C order of the grid",
                    },
                },
            )
            bar.update()
        if with_mni:
            from berg.models.bold5000_resnet18.mni import mni_arrays

            bar.set_description("converting img2fmri 1.0: MNI maps (FNIRT, the long step)")
            for name, arrays in mni_arrays(root).items():
                writer.add_tensors(f"mni/{name}.safetensors", arrays)
            bar.update()
        bar.close()
    return writer.finalize(
        {
            "source": "img2fmri==1.0 wheel from PyPI",
            "wheel_sha256": WHEEL_SHA256,
            "converter": "berg.models.bold5000_resnet18.convert",
            "converter_version": CONVERTER_VERSION,
            "licence": "MIT (img2fmri, Copyright (c) Maxwell Bennett)",
        }
    ).parent
