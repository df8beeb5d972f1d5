"""Refuse a left-right mirrored image: it must match its reference clearly better than its mirror.

A T1w whose header (or data) is flipped left to right is a classic conversion error, and it
passes every geometric check: the transform still has a positive Jacobian, the target still
lies inside the head and on the expected side of the image's own brain centre. Only anatomy
can tell, because brains are not symmetric (petalia, ventricles, sulcal pattern).

T1w (:func:`check_t1w_not_mirrored`, native step). The T1w, masked by its brain mask, is pulled
into MNI152NLin2009cAsym through its own transform and compared with the template brain
(``tpl-MNI152NLin2009cAsym_res-01_desc-brain_T1w``, shipped), both smoothed by
:data:`SMOOTH_MM` on a :data:`STEP_MM` mm grid symmetric about ``x = 0``:

* ``direct``: normalised cross-correlation of the image with the template;
* ``mirror``: the same with every MNI point mirrored (``x -> -x``) before it goes through the
  transform, i.e. the image as it would be had it been flipped;
* ``asymmetry_correlation``: correlation of the image's left-right asymmetry (image minus its
  mirror) with the template's. The symmetric bulk of both images cancels, so this is the
  normalised form of ``direct - mirror`` (it has the same sign).

The T1w is refused when ``direct`` < :data:`MIN_DIRECT` (it is not on the template through its
transform at all) or ``asymmetry_correlation`` < :data:`MIN_ASYMMETRY_R` (the mirror wins, or
they cannot be told apart), whatever the other settings are. The values are recorded in the
native-space JSON (``mirror_check``).

BOLD reference (:func:`check_boldref_not_mirrored`, built-in preprocessing): the same two
alignments of the BOLD reference against the participant's own T1w, through the
coregistration, compared by normalised mutual information (the contrasts differ); refused when
``(direct - mirror) / direct`` < :data:`MIN_RELATIVE_MARGIN_BOLDREF`.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import nibabel as nb
import numpy as np
from scipy import ndimage as ndi

from .errors import InputError
from .io import data_file

#: Spacing (mm) of the MNI sample points (inside the template brain).
STEP_MM = 3.0
#: Gaussian smoothing (sigma, mm) of the T1w and the template before they are compared: the
#: hemispheric asymmetries that tell a brain from its mirror are coarse (petalia, ventricles).
SMOOTH_MM = 4.0
#: Smallest accepted correlation between the asymmetry of the T1w (image minus its mirror, in
#: MNI space) and the asymmetry of the template. It is positive for a correctly oriented brain,
#: negative for a mirrored one (exactly the sign of ``direct - mirror``). Measured (SAFETY.md):
#: correct T1ws +0.42 (sample), +0.71 to +0.84 (real heads and the raw sample through the
#: built-in normalisation); mirrored -0.42 (sample) and -0.40 to -0.11 (a real head).
MIN_ASYMMETRY_R = 0.15
#: Smallest accepted direct correlation with the template: below it the T1w is not on the
#: template through its transform at all (a header changed after fMRIPrep, a transform of
#: another image), and the asymmetry comparison above means nothing. Correct T1ws measured
#: 0.94-0.99; T1ws mirrored about a plane other than their midline 0.10-0.86.
MIN_DIRECT = 0.75
#: Smallest accepted relative margin ``(direct - mirror) / direct`` of the normalised mutual
#: information of the BOLD reference with its T1w (built-in path). Measured: correct runs
#: +0.22 (simulated raw sample, both participants) and +0.36 (a real 3 mm run, studyforrest);
#: the same runs with the BOLD header's x axis negated -0.19 and -0.14.
MIN_RELATIVE_MARGIN_BOLDREF = 0.08
#: The template the T1w is compared with.
TEMPLATE = "tpl-MNI152NLin2009cAsym_res-01_desc-brain_T1w.nii.gz"
TEMPLATE_MASK = "tpl-MNI152NLin2009cAsym_res-01_desc-brain_mask.nii.gz"


@functools.lru_cache(maxsize=2)
def template_points(step_mm: float = STEP_MM, smooth_mm: float = SMOOTH_MM
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sample points of the comparison, their mirrors, and the (smoothed) template there.

    Returns
    -------
    pts : ndarray (N, 3)
        MNI points on a ``step_mm`` grid (symmetric about ``x = 0``) whose point *and* mirror
        point lie in the template brain.
    mirror : ndarray (N,) of int
        Index of each point's mirror (``x -> -x``) in ``pts``.
    values : ndarray (N,)
        The template brain smoothed by ``smooth_mm`` (sigma) at ``pts``.
    """
    img = nb.load(str(data_file(TEMPLATE)))
    mimg = nb.load(str(data_file(TEMPLATE_MASK)))
    data = np.asarray(img.dataobj, dtype=np.float32)
    if smooth_mm:
        data = ndi.gaussian_filter(data, smooth_mm / np.linalg.norm(img.affine[:3, :3], axis=0))
    mask = np.asarray(mimg.dataobj) > 0.5
    lim = np.floor(96.0 / step_mm) * step_mm
    axes = [np.arange(-lim, lim + step_mm / 2, step_mm),
            np.arange(-132.0 + (132.0 % step_mm), 96.0 + 1e-6, step_mm),
            np.arange(-78.0 + (78.0 % step_mm), 114.0 + 1e-6, step_mm)]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)  # (nx, ny, nz, 3)
    inside = sample(mask.astype(np.float32), mimg.affine, grid.reshape(-1, 3),
                    order=0).reshape(grid.shape[:3]) > 0.5
    inside &= inside[::-1]  # the point and its mirror (x axis symmetric about 0)
    mirror_ijk = np.indices(grid.shape[:3])
    mirror_ijk[0] = grid.shape[0] - 1 - mirror_ijk[0]
    flat = -np.ones(grid.shape[:3], dtype=np.int64)
    flat[inside] = np.arange(int(inside.sum()))
    pts = grid[inside]
    mirror = flat[tuple(m[inside] for m in mirror_ijk)]
    assert np.all(mirror >= 0) and np.allclose(pts[mirror] * [-1, 1, 1], pts)
    return pts, mirror, sample(data, img.affine, pts)


def sample(data: np.ndarray, affine: np.ndarray, pts: np.ndarray, order: int = 1) -> np.ndarray:
    """Values of an image at world points (trilinear; 0 outside the grid)."""
    vox = nb.affines.apply_affine(np.linalg.inv(affine), np.asarray(pts, dtype=float))
    return ndi.map_coordinates(np.asarray(data, dtype=np.float32), vox.T, order=order,
                               mode="constant", cval=0.0, prefilter=False)


def ncc(a: np.ndarray, b: np.ndarray) -> float:
    """Normalised cross-correlation (Pearson r) of two samples."""
    a = np.asarray(a, float) - np.mean(a)
    b = np.asarray(b, float) - np.mean(b)
    den = float(np.sqrt((a @ a) * (b @ b)))
    return float(a @ b / den) if den > 0 else 0.0


def nmi(a: np.ndarray, b: np.ndarray, bins: int = 32) -> float:
    """Normalised mutual information ``(H(a) + H(b)) / H(a, b) - 1`` (0: independent)."""
    def edges(x: np.ndarray) -> np.ndarray:
        lo, hi = np.percentile(x, [1, 99])
        return np.linspace(lo, hi + 1e-9 * (abs(hi) + 1), bins + 1)

    h, _, _ = np.histogram2d(np.clip(a, *edges(a)[[0, -1]]), np.clip(b, *edges(b)[[0, -1]]),
                             bins=[edges(a), edges(b)])
    p = h / max(h.sum(), 1)

    def ent(q: np.ndarray) -> float:
        q = q[q > 0]
        return float(-(q * np.log(q)).sum())

    joint = ent(p)
    return (ent(p.sum(1)) + ent(p.sum(0))) / joint - 1.0 if joint > 0 else 0.0


def _in_field(xfm: Any, pts: np.ndarray) -> np.ndarray:
    """Which points lie inside the transform's displacement-field grid (all, if it has none)."""
    comps = getattr(getattr(xfm, "xfm", xfm), "transforms", None) or []
    ok = np.ones(len(pts), dtype=bool)
    for comp in comps[:1]:
        ref = getattr(comp, "reference", None)
        if ref is None or getattr(ref, "affine", None) is None or ref.shape is None:
            continue
        ijk = nb.affines.apply_affine(np.linalg.inv(ref.affine), pts)
        ok &= np.all((ijk >= 0) & (ijk <= np.asarray(ref.shape[:3]) - 1), axis=1)
    return ok


def _fwd(xfm: Any) -> Any:
    from .native import PointTransform, load_point_transform

    return xfm if isinstance(xfm, PointTransform) else load_point_transform(xfm)


def _mapped(fwd: Any, pts: np.ndarray, mirror: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Which points (with their mirrors) the transform covers, and where they land (T1w)."""
    ok = _in_field(fwd, pts)
    ok &= ok[mirror]
    q = np.full(pts.shape, np.nan)
    q[ok] = np.asarray(fwd.xfm.map(pts[ok]), float).reshape(-1, 3)
    return ok, q


def t1w_mirror_scores(t1w: str | os.PathLike[str], brain_mask: str | os.PathLike[str] | None,
                      xfm_mni_to_t1w_points: Any) -> dict[str, Any]:
    """How well the T1w (through its transform) and its left-right mirror match the template.

    Parameters
    ----------
    t1w, brain_mask : path-like
        fMRIPrep ``desc-preproc_T1w`` and ``desc-brain_mask`` (the T1w is masked with it).
    xfm_mni_to_t1w_points : path-like or PointTransform
        ``…_from-T1w_to-MNI152NLin2009cAsym_mode-image_xfm.h5`` (MNI points to T1w points).

    Returns
    -------
    dict
        ``direct`` and ``mirror`` (normalised cross-correlations with the template),
        ``margin`` (``direct - mirror``), ``asymmetry_correlation`` (correlation of the
        image's and the template's left-right asymmetry; same sign as ``margin``),
        ``min_asymmetry_correlation``, ``n_points``, ``metric``, ``template``.
    """
    fwd = _fwd(xfm_mni_to_t1w_points)
    img = nb.load(str(t1w))
    data = np.asarray(img.dataobj, dtype=np.float32)
    if data.ndim > 3:
        data = data[..., 0]
    if brain_mask is not None:
        m = np.asarray(nb.load(str(brain_mask)).dataobj) > 0.5
        if m.shape[:3] == data.shape[:3]:
            data = data * m.reshape(data.shape)
    if SMOOTH_MM:
        data = ndi.gaussian_filter(data, SMOOTH_MM / np.linalg.norm(img.affine[:3, :3], axis=0))
    pts, mirror, tvals = template_points()
    ok, q = _mapped(fwd, pts, mirror)
    w = np.zeros(len(pts), dtype=np.float32)
    w[ok] = sample(data, img.affine, q[ok])
    direct = ncc(tvals[ok], w[ok])
    mirrored = ncc(tvals[ok], w[mirror][ok])
    asym = ncc((tvals - tvals[mirror])[ok], (w - w[mirror])[ok])
    return {"metric": "normalised cross-correlation with the MNI152NLin2009cAsym brain template "
                      f"(T1w masked by its brain mask; both smoothed {SMOOTH_MM:g} mm; "
                      f"{STEP_MM:g} mm grid)",
            "template": TEMPLATE, "n_points": int(ok.sum()),
            "direct": round(direct, 4), "mirror": round(mirrored, 4),
            "margin": round(direct - mirrored, 4),
            "asymmetry_correlation": round(asym, 4),
            "min_asymmetry_correlation": MIN_ASYMMETRY_R, "min_direct": MIN_DIRECT}


def check_t1w_not_mirrored(t1w: str | os.PathLike[str],
                           brain_mask: str | os.PathLike[str] | None,
                           xfm_mni_to_t1w_points: Any) -> dict[str, Any]:
    """Refuse a T1w that matches the template no better than its left-right mirror does.

    Returns
    -------
    dict
        :func:`t1w_mirror_scores` with ``passed: True``.

    Raises
    ------
    InputError
        The T1w is not on the template through its transform (direct correlation below
        :data:`MIN_DIRECT`), or the mirror wins or the margin is too small (asymmetry
        correlation below :data:`MIN_ASYMMETRY_R`).
    """
    s = t1w_mirror_scores(t1w, brain_mask, xfm_mni_to_t1w_points)
    if not s["direct"] >= MIN_DIRECT:
        raise InputError(t1w, f"this T1w does not match the MNI template through its transform "
                         f"(correlation {s['direct']:.3f}, at least {MIN_DIRECT:g} is required; "
                         f"{s['mirror']:.3f} when mirrored left to right): the transform does not "
                         "belong to this T1w, or the T1w's header was changed (e.g. flipped) "
                         "after fMRIPrep ran.", "Do not use targets from it. Use the T1w and "
                         "transforms of one fMRIPrep run, and check the T1w's orientation.")
    if not s["asymmetry_correlation"] >= MIN_ASYMMETRY_R:
        how = ("matches the MNI template better when mirrored left to right"
               if s["margin"] < 0 else "matches the MNI template hardly better than its "
               "left-right mirror")
        raise InputError(t1w, f"this T1w {how} (correlation {s['direct']:.4f} as it is, "
                         f"{s['mirror']:.4f} mirrored; its left-right asymmetry correlates "
                         f"{s['asymmetry_correlation']:+.2f} with the template's, at least "
                         f"{MIN_ASYMMETRY_R:+.2f} is required): its left-right orientation "
                         "(header) is probably flipped, so a target would land on the wrong "
                         "side of the head.", "Do not use targets from it. Check the T1w's "
                         "orientation (a vitamin-E marker or the scanner's DICOM), fix the "
                         "conversion and rerun fMRIPrep.")
    return {**s, "passed": True}


def boldref_mirror_scores(ref_img: nb.Nifti1Image, t1w_to_boldref: np.ndarray,
                          t1w: str | os.PathLike[str], brain_mask: str | os.PathLike[str],
                          xfm_mni_to_t1w_points: Any) -> dict[str, Any]:
    """Mutual information of the BOLD reference with its T1w, as it is and mirrored.

    Parameters
    ----------
    ref_img : Nifti1Image
        The BOLD reference (its own, scanner, grid).
    t1w_to_boldref : ndarray (4, 4)
        Rigid point map from T1w world to BOLD-reference world (the coregistration).
    t1w, brain_mask : path-like
        The participant's T1w and brain mask.
    xfm_mni_to_t1w_points : path-like or PointTransform
        MNI points to T1w points: mirroring is about the MNI midline (``x -> -x``), mapped
        into the T1w.
    """
    fwd = _fwd(xfm_mni_to_t1w_points)
    t1 = nb.load(str(t1w))
    t1d = np.asarray(t1.dataobj, dtype=np.float32)
    m = np.asarray(nb.load(str(brain_mask)).dataobj) > 0.5
    ref = np.asarray(ref_img.dataobj, dtype=np.float32)
    pts, mirror, _ = template_points()
    ok, q = _mapped(fwd, pts, mirror)
    inside = np.zeros(len(pts), dtype=bool)
    inside[ok] = sample(m.astype(np.float32), t1.affine, q[ok], order=0) > 0.5
    inside &= inside[mirror]
    fixed = sample(t1d, t1.affine, q[inside])
    b = np.zeros(len(pts), dtype=np.float32)
    b[inside] = sample(ref, ref_img.affine, nb.affines.apply_affine(t1w_to_boldref, q[inside]))
    direct = nmi(fixed, b[inside])
    mirrored = nmi(fixed, b[mirror][inside])
    rel = (direct - mirrored) / direct if direct > 0 else 0.0
    return {"metric": "normalised mutual information of the BOLD reference with the T1w inside "
                      f"its brain mask ({STEP_MM:g} mm MNI grid mapped into the T1w)",
            "n_points": int(inside.sum()), "direct": round(direct, 4),
            "mirror": round(mirrored, 4), "margin": round(direct - mirrored, 4),
            "relative_margin": round(rel, 4),
            "min_relative_margin": MIN_RELATIVE_MARGIN_BOLDREF}


def check_boldref_not_mirrored(ref_img: nb.Nifti1Image, t1w_to_boldref: np.ndarray,
                               t1w: str | os.PathLike[str], brain_mask: str | os.PathLike[str],
                               xfm_mni_to_t1w_points: Any,
                               bold_path: str | os.PathLike[str] | None = None
                               ) -> dict[str, Any]:
    """Refuse a BOLD run whose reference matches its T1w no better than its mirror does.

    Raises
    ------
    InputError
        The mirror wins or the relative margin is below :data:`MIN_RELATIVE_MARGIN_BOLDREF`
        (names ``bold_path``).
    """
    s = boldref_mirror_scores(ref_img, t1w_to_boldref, t1w, brain_mask, xfm_mni_to_t1w_points)
    if not s["relative_margin"] >= MIN_RELATIVE_MARGIN_BOLDREF:
        raise InputError(bold_path or Path(str(t1w)), (
            "the BOLD reference matches the T1w "
            + ("better when mirrored left to right" if s["margin"] < 0 else
               "hardly better than its left-right mirror")
            + f" (mutual information {s['direct']:.4f} as it is, {s['mirror']:.4f} mirrored: "
            f"{100 * s['relative_margin']:+.0f} %, at least "
            f"{100 * MIN_RELATIVE_MARGIN_BOLDREF:+.0f} % is required): the BOLD and the T1w "
            "headers may disagree about left and right."),
            "Check both images' orientation (the scanner's DICOM) and fix the conversion; do "
            "not use targets from this run.")
    return {**s, "passed": True}
