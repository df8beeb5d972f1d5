"""A simulated fMRIPrep derivatives tree in ``space-MNI152NLin6Asym`` (sample generator option).

How it is made (documented choice: *warp*, not re-simulate)
-----------------------------------------------------------
The ordinary simulated tree (:func:`tmstarget.simulate.make_dataset`, MNI152NLin2009cAsym) is
written first, then every template-space file is moved into MNI152NLin6Asym through the
**shipped** template transform (:func:`tmstarget.spaces.convert_points`), as fMRIPrep would
have resampled the same participant into the other template:

* BOLD: for every voxel centre ``x`` of an MNI152NLin6Asym grid (the fMRIPrep ``res-2`` grid,
  coarsened to the simulation's voxel size, 91x109x91 at 2 mm -> 46x55x46 at 4 mm), the value of
  the 2009c BOLD at ``T(x)`` (``T``: NLin6 -> 2009c points), trilinear, every volume; stored in
  the source file's storage orientation (``RAS``, ``LAS``, ...), int16 with a slope.
* brain mask: the 2009c mask sampled the same way (trilinear, >= 0.5).
* confounds: copied (same participant, same motion and nuisance signals).
* anatomy: the same T1w (Colin27 voxels, moved affine) and brain mask, copied; the two fMRIPrep
  transforms are rewritten for the new template as displacement fields composing the shipped
  template transform with the participant's own T1w <-> 2009c map:
  ``from-T1w_to-MNI152NLin6Asym``: NLin6 point ``p`` -> T1w point ``F(T(p))`` and
  ``from-MNI152NLin6Asym_to-T1w``: T1w point ``q`` -> NLin6 point ``T^-1(F^-1(q))``.
  Outside the shipped field's coverage (beyond the brain, far scalp) the field holds the
  participant's map without the template warp (a few mm off there; the planted targets and the
  reference sites lie well inside).

The planted target is therefore the 2009c planted coordinate moved by the shipped transform:
``truth.tsv`` gives it (``x``, ``y``, ``z`` in MNI152NLin6Asym) with the 2009c original
(``planted_x/y/z``, ``planted_space``); the T1w truth (``t1w_x/y/z``) is unchanged.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from scipy import ndimage as ndi

from tmstarget import itk
from tmstarget.regions import voxel_centers_mm
from tmstarget.simulate import _mni_header, _quantize, make_dataset, reorient_storage, save_nifti
from tmstarget.spaces import NLIN6, NLIN2009C, _inside_field, convert_points

__all__ = ["NLIN6_RES2_AFFINE", "NLIN6_RES2_SHAPE", "nlin6_grid", "make_dataset_nlin6",
           "warp_tree_to_nlin6"]

#: fMRIPrep/TemplateFlow MNI152NLin6Asym res-2 grid (RAS, voxel centres -90..90, -126..90,
#: -72..108 mm).
NLIN6_RES2_SHAPE: tuple[int, int, int] = (91, 109, 91)
NLIN6_RES2_AFFINE: np.ndarray = np.array([[2.0, 0, 0, -90.0], [0, 2.0, 0, -126.0],
                                          [0, 0, 2.0, -72.0], [0, 0, 0, 1.0]])


def nlin6_grid(voxel_size: float) -> tuple[tuple[int, int, int], np.ndarray]:
    """The MNI152NLin6Asym res-2 grid coarsened to ``voxel_size`` (multiple of 2 mm), RAS."""
    f = int(round(voxel_size / 2.0))
    if f < 1 or abs(voxel_size / 2.0 - f) > 1e-9:
        raise ValueError("voxel_size must be a positive multiple of 2 mm")
    shape = tuple(int(np.ceil(s / f)) for s in NLIN6_RES2_SHAPE)
    aff = NLIN6_RES2_AFFINE.copy()
    aff[:3, :3] *= f
    aff[:3, 3] += NLIN6_RES2_AFFINE[:3, :3] @ np.full(3, (f - 1) / 2.0)
    return shape, aff  # type: ignore[return-value]


def _to_2009c(xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """NLin6 points -> 2009c points (shipped transform) where the field covers them."""
    ok = _inside_field(from_space=NLIN6, to_space=NLIN2009C, pts=xyz)
    out = xyz.copy()
    out[ok] = convert_points(xyz[ok], NLIN6, NLIN2009C)
    return out, ok


def _warp_bold(src: Path, dst: Path, shape: tuple[int, int, int], aff: np.ndarray) -> None:
    img = nib.load(src)
    data = np.asarray(img.dataobj, dtype=np.float64)
    orient = "".join(nib.aff2axcodes(img.affine))
    xyz = voxel_centers_mm(shape, aff).reshape(-1, 3)
    y, ok = _to_2009c(xyz)
    ijk = nib.affines.apply_affine(np.linalg.inv(img.affine), y).T
    if data.ndim == 3:  # brain mask
        m = ndi.map_coordinates(data.astype(np.float32), ijk, order=1, mode="constant")
        m[~ok] = 0
        out = (m.reshape(shape) >= 0.5).astype(np.uint8)
        out, oaff = reorient_storage(out, aff, orient)
        mimg = nib.Nifti1Image(out, oaff)
        mimg.header.set_data_dtype(np.uint8)
        _mni_header(mimg)
        save_nifti(mimg, dst)
        return
    vol = np.zeros((*shape, data.shape[3]), np.float64)
    flat = vol.reshape(-1, data.shape[3])
    for t in range(data.shape[3]):
        v = ndi.map_coordinates(data[..., t], ijk, order=1, mode="constant")
        v[~ok] = 0
        flat[:, t] = v
    codes, slope = _quantize(vol)
    codes, oaff = reorient_storage(codes, aff, orient)
    bold = nib.Nifti1Image(codes, oaff)
    bold.header.set_data_dtype(np.int16)
    _mni_header(bold, float(img.header.get_zooms()[3]))
    save_nifti(bold, dst, slope=slope, compresslevel=9)


def _field(path: Path, point_map, lo, hi, spacing: float = 4.0) -> None:
    """Write ``point_map`` (N,3 -> N,3, RAS mm) as an ITK displacement field over a box."""
    shape, origin_lps = itk.field_grid(lo, hi, spacing, 40.0)
    origin_ras = np.asarray(origin_lps, float) * np.array([-1.0, -1.0, 1.0])
    aff = np.diag([-spacing, -spacing, spacing, 1.0])  # LPS-ordered grid, written in RAS
    aff[:3, 3] = origin_ras
    pts = voxel_centers_mm(tuple(shape), aff).reshape(-1, 3)
    disp = (point_map(pts) - pts).reshape(*shape, 3)
    itk.write_itk_h5_displacement(path, disp, aff)


def _rewrite_transforms(anat_src: Path, anat_dst: Path, label: str) -> None:
    from tmstarget.native import load_point_transform

    fwd_src = anat_src / f"sub-{label}_from-T1w_to-{NLIN2009C}_mode-image_xfm.h5"
    inv_src = anat_src / f"sub-{label}_from-{NLIN2009C}_to-T1w_mode-image_xfm.h5"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fwd = load_point_transform(fwd_src)  # 2009c points -> T1w points
        inv = load_point_transform(inv_src)  # T1w points -> 2009c points

    def nlin6_to_t1w(p: np.ndarray) -> np.ndarray:
        return fwd.map(_to_2009c(p)[0])

    def t1w_to_nlin6(q: np.ndarray) -> np.ndarray:
        c = inv.map(q)
        ok = _inside_field(from_space=NLIN2009C, to_space=NLIN6, pts=c)
        c[ok] = convert_points(c[ok], NLIN2009C, NLIN6)
        return c

    lo, hi = map(np.asarray, itk.MNI_HEAD_BBOX_RAS)
    _field(anat_dst / f"sub-{label}_from-T1w_to-{NLIN6}_mode-image_xfm.h5", nlin6_to_t1w, lo, hi)
    corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1])
                        for z in (lo[2], hi[2])], float)
    t1c = fwd.map(corners)
    _field(anat_dst / f"sub-{label}_from-{NLIN6}_to-T1w_mode-image_xfm.h5", t1w_to_nlin6,
           t1c.min(axis=0), t1c.max(axis=0))


def warp_tree_to_nlin6(src_root: str | os.PathLike, dst_root: str | os.PathLike,
                       voxel_size: float = 4.0) -> pd.DataFrame:
    """Move a simulated 2009c tree (:func:`make_dataset`) into MNI152NLin6Asym (module doc)."""
    src_root, dst_root = Path(src_root), Path(dst_root)
    dst_root.mkdir(parents=True, exist_ok=True)
    shape, aff = nlin6_grid(voxel_size)
    tag = f"_space-{NLIN2009C}_"
    for f in sorted(src_root.rglob("*")):
        if f.is_dir():
            continue
        rel = f.relative_to(src_root)
        out = dst_root / str(rel).replace(tag, f"_space-{NLIN6}_")
        out.parent.mkdir(parents=True, exist_ok=True)
        if f.name.endswith("_xfm.h5"):
            continue
        if tag in f.name and f.name.endswith(".nii.gz"):
            _warp_bold(f, out, shape, aff)
        elif f.name == "truth.tsv":
            continue
        else:
            shutil.copyfile(f, out)
    for anat in sorted(src_root.glob("sub-*/anat")):
        _rewrite_transforms(anat, dst_root / anat.relative_to(src_root), anat.parent.name[4:])
    truth = pd.read_csv(src_root / "truth.tsv", sep="\t", dtype={"session_id": str})
    planted = truth[["x", "y", "z"]].to_numpy(float)
    moved = convert_points(planted, NLIN2009C, NLIN6)
    truth = truth.assign(planted_space=NLIN2009C, planted_x=planted[:, 0],
                         planted_y=planted[:, 1], planted_z=planted[:, 2], space=NLIN6,
                         x=np.round(moved[:, 0], 3), y=np.round(moved[:, 1], 3),
                         z=np.round(moved[:, 2], 3))
    (dst_root / "truth.tsv").write_text(truth.to_csv(sep="\t", index=False, lineterminator="\n"))
    return truth


def make_dataset_nlin6(root: str | os.PathLike, voxel_size: float = 4.0,
                       **kwargs) -> pd.DataFrame:
    """:func:`tmstarget.simulate.make_dataset`, then :func:`warp_tree_to_nlin6` into ``root``."""
    root = Path(root)
    if kwargs.pop("clean", False):
        for old in sorted(root.glob("sub-*")):
            shutil.rmtree(old)
    with tempfile.TemporaryDirectory(prefix="tmstarget-nlin6-") as tmp:
        make_dataset(tmp, voxel_size=voxel_size, **kwargs)
        return warp_tree_to_nlin6(tmp, root, voxel_size)


def restored_copy(root: str | os.PathLike, src_label: str, dst_label: str,
                  bold_orientation: str = "LAS", anat_orientation: str = "LPS") -> None:
    """Copy participant ``src_label`` as ``dst_label`` with every image re-stored (flipped axes).

    Same voxels at the same world positions (only the storage order and the affine change), so
    a correct pipeline gives the copy exactly the same targets: the orientation canary.
    Transforms, confounds and sidecars are copied unchanged (they are in world coordinates).
    """
    root = Path(root)
    src = root / f"sub-{src_label}"
    for f in sorted(src.rglob("*")):
        if f.is_dir():
            continue
        out = root / f"sub-{dst_label}" / f.relative_to(src)
        out = out.with_name(out.name.replace(f"sub-{src_label}_", f"sub-{dst_label}_", 1))
        out.parent.mkdir(parents=True, exist_ok=True)
        if not f.name.endswith(".nii.gz"):
            shutil.copyfile(f, out)
            continue
        img = nib.load(f)
        canon = nib.as_closest_canonical(img)
        raw = np.asarray(canon.dataobj.get_unscaled())
        slope = img.dataobj.slope
        orient = anat_orientation if "/anat/" in f.as_posix() else bold_orientation
        data, aff = reorient_storage(raw, canon.affine, orient)
        new = nib.Nifti1Image(data, aff, header=img.header)
        new.set_qform(aff, code=int(img.header["qform_code"]))
        new.set_sform(aff, code=int(img.header["sform_code"]))
        save_nifti(new, out, slope=None if slope in (1.0, None) else float(slope))
