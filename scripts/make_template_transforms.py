#!/usr/bin/env python
"""Compute the MNI152NLin6Asym <-> MNI152NLin2009cAsym transforms shipped with tmstarget.

Run once by a developer (needs ANTsPy: ``pip install -e '.[preproc]'``; ~10-20 min on 2 cores);
never at pipeline time. Writes, into ``src/tmstarget/data/``:

* ``tpl-MNI152NLin2009cAsym_from-MNI152NLin6Asym_mode-image_xfm.h5`` -- resamples an NLin6
  image into 2009c; as a point map it takes **2009c points to NLin6 points**;
* ``tpl-MNI152NLin6Asym_from-MNI152NLin2009cAsym_mode-image_xfm.h5`` -- resamples a 2009c
  image into NLin6; as a point map it takes **NLin6 points to 2009c points** (the one used
  to bring coordinates published in FSL's MNI152 into fMRIPrep's default space);
* ``template_transforms.json`` -- provenance: inputs and their SHA-256, ANTs settings, software
  versions, and the measured accuracy.

Method: the NLin6 whole-head T1w (FSL's MNI152, from the nimare 0.22.1 wheel) is registered to
the brain-extracted 2009c T1w (TemplateFlow), both read at 1 mm and registered on 2 mm grids, with ANTs (affine then SyN, mutual
information then cross-correlation, metric evaluated inside the 2009c brain mask only, so the
NLin6 skull plays no part). Pass 1 gives an NLin6 brain mask (the 2009c mask pulled back); pass 2
registers the NLin6 brain (masked) to the 2009c brain. The composite ANTs transforms are then
sampled on a 3 mm grid covering both templates' brains with a margin and stored as
displacement-field-only ITK HDF5 files (float32, gzip; 2.5 MB each, against 8 MB at 2 mm),
within ~0.1 mm of ANTs' own maps between the grid points (measured below and recorded).

Usage::

    python scripts/make_template_transforms.py --templates /path/to/templates [--out DIR]

where ``--templates`` holds ``tpl-MNI152NLin6Asym_res-01_T1w.nii.gz``,
``tpl-MNI152NLin2009cAsym_res-01_desc-brain_T1w.nii.gz`` and
``tpl-MNI152NLin2009cAsym_res-01_desc-brain_mask.nii.gz``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import nibabel as nb
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

NLIN6 = "tpl-MNI152NLin6Asym_res-01_T1w.nii.gz"
C2009_BRAIN = "tpl-MNI152NLin2009cAsym_res-01_desc-brain_T1w.nii.gz"
C2009_MASK = "tpl-MNI152NLin2009cAsym_res-01_desc-brain_mask.nii.gz"
TO_2009C = "tpl-MNI152NLin6Asym_from-MNI152NLin2009cAsym_mode-image_xfm.h5"
TO_NLIN6 = "tpl-MNI152NLin2009cAsym_from-MNI152NLin6Asym_mode-image_xfm.h5"
#: RAS box (mm) the sampled fields cover: the 2009c template's box (where ANTs' fields are
#: defined) less 6 mm. Points are mapped where they lie >= 3 grid spacings inside it
#: (tmstarget.native.FIELD_EDGE_MARGIN_VOXELS): x -81..81, y -117..81, z -63..99 mm, which
#: holds the brain of both templates.
BOX = ((-90.0, -126.0, -72.0), (90.0, 90.0, 108.0))
SPACING = 3.0


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _grid() -> tuple[np.ndarray, tuple[int, int, int], np.ndarray]:
    lo, hi = np.array(BOX[0]), np.array(BOX[1])
    shape = tuple(int(v) for v in np.ceil((hi - lo) / SPACING).astype(int) + 1)
    aff = np.diag([SPACING, SPACING, SPACING, 1.0])
    aff[:3, 3] = lo
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
    return aff, shape, ijk.reshape(-1, 3) @ aff[:3, :3].T + aff[:3, 3]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--templates", required=True, type=Path)
    ap.add_argument("--out", type=Path,
                    default=Path(__file__).resolve().parents[1] / "src" / "tmstarget" / "data")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "tmstarget_tplxfm",
                    help="keeps ANTs' outputs; with --reuse they are not recomputed")
    ap.add_argument("--reuse", action="store_true")
    args = ap.parse_args(argv)
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(args.threads)
    import ants

    from tmstarget.itk import write_itk_h5_displacement
    from tmstarget.native import load_point_transform

    warnings.simplefilter("ignore")
    t0 = time.time()
    src = {k: args.templates / k for k in (NLIN6, C2009_BRAIN, C2009_MASK)}
    # registered on 2 mm grids (the warp between two templates is smooth, and the shipped field
    # is sampled at 2 mm anyway); the inputs are read at 1 mm and downsampled
    fixed = ants.resample_image(ants.image_read(str(src[C2009_BRAIN])), (2.0, 2.0, 2.0), False, 0)
    fmask = ants.resample_image(ants.image_read(str(src[C2009_MASK])), (2.0, 2.0, 2.0), False, 1)
    moving = ants.resample_image(ants.image_read(str(src[NLIN6])), (2.0, 2.0, 2.0), False, 0)
    settings = {"type_of_transform": "SyN", "aff_metric": "mattes", "syn_metric": "CC",
                "syn_sampling": 4, "reg_iterations": [100, 70, 50],
                "grid_mm": 2.0, "mask": "2009c brain mask (fixed space)", "random_seed": 1}
    args.work.mkdir(parents=True, exist_ok=True)
    tmp = str(args.work)
    fm = fmask.numpy() > 0
    if True:  # (one block: the registration, or its reuse with --reuse)
        if not (args.reuse and Path(f"{tmp}/p2_Composite.h5").is_file()):
            # pass 1: an NLin6 brain mask (the 2009c mask pulled back through a first SyN)
            r1 = ants.registration(fixed, moving, "SyN", mask=fmask, aff_metric="mattes",
                                   random_seed=1, outprefix=f"{tmp}/p1_")
            mmask = ants.apply_transforms(moving, fmask, r1["invtransforms"],
                                          whichtoinvert=[True, False],
                                          interpolator="nearestNeighbor")
            ants.image_write(mmask, f"{tmp}/nlin6_brain_mask.nii.gz")
            mbrain = moving * ants.iMath(mmask, "MD", 1)
            # pass 2: brain to brain
            ants.registration(fixed, mbrain, "SyN", mask=fmask, aff_metric="mattes",
                              syn_metric="CC", syn_sampling=4,
                              reg_iterations=tuple(settings["reg_iterations"]), random_seed=1,
                              write_composite_transform=True, outprefix=f"{tmp}/p2_")
        mmask = ants.image_read(f"{tmp}/nlin6_brain_mask.nii.gz")
        mbrain = moving * ants.iMath(mmask, "MD", 1)
        fwd = [f"{tmp}/p2_Composite.h5"]  # warps NLin6 images into 2009c
        warped = ants.apply_transforms(fixed, mbrain, fwd)
        cc_before = float(np.corrcoef(ants.resample_image_to_target(mbrain, fixed).numpy()[fm],
                                      fixed.numpy()[fm])[0, 1])
        cc_after = float(np.corrcoef(warped.numpy()[fm], fixed.numpy()[fm])[0, 1])
        # ANTs' composites: InverseComposite maps moving (NLin6) points to fixed (2009c)
        # points; Composite maps 2009c points to NLin6 points (tmstarget.native convention).
        to_2009c = load_point_transform(f"{tmp}/p2_InverseComposite.h5")
        to_nlin6 = load_point_transform(f"{tmp}/p2_Composite.h5")
        aff, shape, pts = _grid()
        out = {}
        for name, xfm in ((TO_2009C, to_2009c), (TO_NLIN6, to_nlin6)):
            mapped = np.empty_like(pts)
            for a in range(0, len(pts), 200_000):
                mapped[a:a + 200_000] = xfm.xfm.map(pts[a:a + 200_000])
            disp = (mapped - pts).reshape(*shape, 3)
            write_itk_h5_displacement(args.out / name, disp, aff)
            # accuracy of the shipped field against ANTs' own map, between grid points
            rng = np.random.default_rng(0)
            test = rng.uniform([-70, -100, -60], [70, 70, 80], size=(2000, 3))
            ref = xfm.xfm.map(test)
            got = load_point_transform(args.out / name).map(test)
            out[name] = {"max_error_vs_ants_mm": float(np.abs(got - ref).max()),
                         "max_displacement_in_brain_box_mm": float(
                             np.linalg.norm(ref - test, axis=1).max())}
        # round trip NLin6 -> 2009c -> NLin6
        test = np.random.default_rng(1).uniform([-70, -100, -60], [70, 70, 80], size=(2000, 3))
        back = load_point_transform(args.out / TO_NLIN6).map(
            load_point_transform(args.out / TO_2009C).map(test))
        round_trip = float(np.linalg.norm(back - test, axis=1).max())
        # direction check independent of point conventions: a 4 mm ball at a published NLin6
        # coordinate, warped as an IMAGE into 2009c; its centroid vs the point map
        p6 = np.array([[6.0, 16.0, -10.0], [-44.0, 40.0, 29.0]])
        p9 = load_point_transform(args.out / TO_2009C).map(p6)
        img6 = nb.load(src[NLIN6])
        ijk = np.stack(np.meshgrid(*[np.arange(n) for n in img6.shape[:3]], indexing="ij"), -1)
        xyz = ijk @ img6.affine[:3, :3].T + img6.affine[:3, 3]
        checks = []
        for a, b in zip(p6, p9, strict=True):
            ball = (np.linalg.norm(xyz - a, axis=-1) <= 4.0).astype(np.float32)
            nb.save(nb.Nifti1Image(ball, img6.affine), f"{tmp}/ball.nii.gz")
            w = ants.apply_transforms(fixed, ants.image_read(f"{tmp}/ball.nii.gz"), fwd)
            ants.image_write(w, f"{tmp}/ball_2009c.nii.gz")
            wimg = nb.load(f"{tmp}/ball_2009c.nii.gz")
            fijk = np.argwhere(np.asarray(wimg.dataobj) > 0.5)
            c = (fijk @ wimg.affine[:3, :3].T + wimg.affine[:3, 3]).mean(axis=0)
            checks.append({"nlin6": a.tolist(), "point_map_2009c": [round(float(v), 3) for v in b],
                           "image_warp_centroid_2009c": [round(float(v), 3) for v in c],
                           "difference_mm": round(float(np.linalg.norm(c - b)), 3)})
    prov = {
        "Description": "MNI152NLin6Asym <-> MNI152NLin2009cAsym transforms (template to template) "
                       "computed by scripts/make_template_transforms.py; see its docstring.",
        "Files": {TO_2009C: "point map: MNI152NLin6Asym points -> MNI152NLin2009cAsym points "
                            "(resamples a 2009c image into NLin6)",
                  TO_NLIN6: "point map: MNI152NLin2009cAsym points -> MNI152NLin6Asym points "
                            "(resamples an NLin6 image into 2009c)"},
        "Inputs": {k: {"sha256": _sha(v),
                       "source": ("nimare 0.22.1 wheel, nimare/resources/templates (FSL MNI152)"
                                  if k == NLIN6 else "TemplateFlow via FCP-INDI/C-PAC")}
                   for k, v in src.items()},
        "ANTs": settings,
        "Grid": {"box_ras_mm": BOX, "spacing_mm": SPACING},
        "Accuracy": {"brain_correlation_before": round(cc_before, 4),
                     "brain_correlation_after": round(cc_after, 4),
                     "round_trip_max_mm": round(round_trip, 3), "per_file": out,
                     "image_warp_vs_point_map": checks},
        "Software": {"antspyx": getattr(ants, "__version__", "?"), "nibabel": nb.__version__,
                     "numpy": np.__version__},
        "Date": dt.date.today().isoformat(),
        "RunSeconds": round(time.time() - t0, 1),
    }
    (args.out / "template_transforms.json").write_text(json.dumps(prov, indent=2) + "\n")
    print(json.dumps(prov["Accuracy"], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
