#!/usr/bin/env python
"""Recompute where Colin27's landmarks lie in the MNI152NLin2009cAsym template (needs ANTsPy).

Reference for ``tmstarget.simulate_raw.LANDMARKS``: a careful ANTs SyN of the *unmoved* Colin27
head (masked with the template brain mask; Colin27 is already in MNI space) to the 1 mm
template brain, iterations 100/70/50/20 (down to full resolution). Takes ~12 min on 2 cores.
Prints the table to paste into ``LANDMARKS``.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
import ants  # noqa: E402

from tmstarget.builtin import _data_file  # noqa: E402
from tmstarget.native import load_point_transform  # noqa: E402
from tmstarget.simulate_raw import LANDMARKS  # noqa: E402


def main() -> int:
    colin = ants.image_read(str(_data_file("colin27_ch2_head.nii.gz")))
    tpl = ants.image_read(str(_data_file("tpl-MNI152NLin2009cAsym_res-01_desc-brain_T1w.nii.gz")))
    mask = ants.image_read(str(_data_file("tpl-MNI152NLin2009cAsym_res-01_desc-brain_mask.nii.gz")))
    brain = colin * ants.resample_image_to_target(mask, colin, interp_type="nearestNeighbor")
    with tempfile.TemporaryDirectory() as tmp:
        ants.registration(tpl, brain, "SyN", reg_iterations=(100, 70, 50, 20),
                          write_composite_transform=True, outprefix=f"{tmp}/r_")
        pts = np.array([p for _, p, _ in LANDMARKS], dtype=float)
        # InverseComposite: pull map for resampling the template onto Colin27, i.e. it maps
        # Colin27 points to template points
        out = load_point_transform(f"{tmp}/r_InverseComposite.h5").map(pts)
    for (name, p, _), q in zip(LANDMARKS, out, strict=True):
        print(f'    ("{name}", {tuple(p)}, {tuple(round(float(v), 2) for v in q)}),')
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
