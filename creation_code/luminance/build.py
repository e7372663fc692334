"""Build the ``fmri-luminance-baseline`` artifact with berg's own code (no data, nothing learned).

The model (img2fmri's luminance baseline: Rec. 709 luma of ImageNet-normalised 224 x 224 frames,
averaged over 14 x 14 blocks) is fixed; its artifact is an identity readout over the 256 grid cells plus
metadata, written by :func:`berg.models.luminance.build_artifact`. berg also builds it by itself the
first time the model is loaded, so running this is only needed to place it in a chosen folder.

    python -m creation_code.luminance.build [OUT_DIR]
"""

from __future__ import annotations

from berg.models.luminance import _main

if __name__ == "__main__":
    _main()
