"""Regenerate ``examples/clips/shapes.mp4``: a 4-second synthetic clip with one scene change.

The clip is generated, not filmed (licence: CC0 1.0, see ``examples/README.md``). It is small on
purpose (128 x 128 pixels, 12 frames per second, 48 frames) so that it can ship in the repository and
decode in milliseconds; the video model samples 14 frames from it, a movie analysis 2 frames per
second. Scene 1 (0-2 s): a red disc moving right over a blue-grey gradient. Scene 2 (2-4 s): a
yellow square moving down over a green gradient, so the scene change at 2.0 s is a known event
boundary.

Usage::

    python examples/make_clip.py [OUT.mp4]
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

SIZE, FPS, SECONDS = 128, 12, 4
BOUNDARY_S = 2.0  # the scene change, in seconds


def frames() -> np.ndarray:
    """The clip's frames, uint8 ``(T, H, W, 3)``; deterministic (no randomness at all)."""
    n = FPS * SECONDS
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) / (SIZE - 1)
    out = np.empty((n, SIZE, SIZE, 3), np.uint8)
    for t in range(n):
        seconds = t / FPS
        if seconds < BOUNDARY_S:
            phase = seconds / BOUNDARY_S
            img = np.stack([60 + 40 * yy, 70 + 50 * yy, 140 + 80 * yy], axis=-1)
            cx, cy = 0.15 + 0.7 * phase, 0.5
            disc = (xx - cx) ** 2 + (yy - cy) ** 2 < 0.15**2
            img[disc] = (220, 40, 40)
        else:
            phase = (seconds - BOUNDARY_S) / (SECONDS - BOUNDARY_S)
            img = np.stack([40 + 60 * xx, 120 + 80 * xx, 50 + 30 * xx], axis=-1)
            cx, cy = 0.5, 0.15 + 0.7 * phase
            square = (np.abs(xx - cx) < 0.13) & (np.abs(yy - cy) < 0.13)
            img[square] = (240, 220, 50)
        out[t] = np.clip(img, 0, 255).astype(np.uint8)
    return out


def write(path: Path) -> Path:
    """Encode the frames as H.264 MP4 (yuv420p, plays everywhere) at ``path``."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.mp4")
    with av.open(str(tmp), mode="w") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width = stream.height = SIZE
        stream.pix_fmt = "yuv420p"
        # Deterministic, small output: fixed quality and no B-frame reordering surprises.
        stream.options = {"crf": "23", "preset": "medium", "bf": "0"}
        for frame in frames():
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    tmp.replace(path)
    return path


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).with_name("clips") / "shapes.mp4"
    sys.stdout.write(f"wrote {write(target)}\n")
