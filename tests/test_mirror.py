"""A left-right mirrored T1w (or BOLD reference) is refused: ``tmstarget.mirror``.

Oracles: the sample's real anatomy (Colin27, simulated participants) as it is and mirrored; an
independent computation of the same correlations (nitransforms resampling on the full 1 mm
template grid, numpy flip for the mirror); storage orientation cannot matter.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nb
import numpy as np
import pytest
from scipy import ndimage as ndi

from tmstarget.errors import InputError
from tmstarget.io import data_file
from tmstarget.mirror import (
    MIN_ASYMMETRY_R,
    MIN_DIRECT,
    TEMPLATE,
    TEMPLATE_MASK,
    check_boldref_not_mirrored,
    check_t1w_not_mirrored,
    t1w_mirror_scores,
)

REPO = Path(__file__).resolve().parents[1]
ANAT = REPO / "data_sample" / "sub-01" / "anat"
T1W = ANAT / "sub-01_desc-preproc_T1w.nii.gz"
MASK = ANAT / "sub-01_desc-brain_mask.nii.gz"
FWD = ANAT / "sub-01_from-T1w_to-MNI152NLin2009cAsym_mode-image_xfm.h5"


def mirrored_copy(folder: Path, how: str = "data") -> tuple[Path, Path]:
    """The T1w and its mask mirrored consistently (transforms kept): ``data`` flips the voxel
    array along its first axis (= a header whose first axis is flipped), ``header`` negates the
    world x axis of the affine."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for f in (T1W, MASK):
        img = nb.load(f)
        data, aff = np.asarray(img.dataobj), img.affine.copy()
        if how == "data":
            data = data[::-1]
        else:
            aff = np.diag([-1.0, 1, 1, 1]) @ aff
        o = nb.Nifti1Image(data, aff, img.header)
        o.set_qform(aff, 1)
        o.set_sform(aff, 1)
        nb.save(o, folder / f.name)
        out.append(folder / f.name)
    return out[0], out[1]


def test_sample_t1w_accepted_and_mirrored_refused(tmp_path):
    ok = check_t1w_not_mirrored(T1W, MASK, FWD)
    assert ok["passed"] and ok["direct"] > ok["mirror"]
    assert ok["asymmetry_correlation"] > MIN_ASYMMETRY_R + 0.2 and ok["direct"] > MIN_DIRECT
    t1, m = mirrored_copy(tmp_path / "flip")
    bad = t1w_mirror_scores(t1, m, FWD)
    # a pure flip about the midline swaps the two alignments exactly
    assert bad["direct"] == pytest.approx(ok["mirror"], abs=2e-3)
    assert bad["mirror"] == pytest.approx(ok["direct"], abs=2e-3)
    assert bad["asymmetry_correlation"] == pytest.approx(-ok["asymmetry_correlation"], abs=5e-3)
    with pytest.raises(InputError) as ei:
        check_t1w_not_mirrored(t1, m, FWD)
    msg = str(ei.value)
    assert str(t1) in msg and "mirrored" in msg and "What to do:" in msg


def test_header_flipped_t1w_refused(tmp_path):
    t1, m = mirrored_copy(tmp_path / "hdr", how="header")
    with pytest.raises(InputError, match="flipped"):
        check_t1w_not_mirrored(t1, m, FWD)


def test_storage_orientation_cannot_matter(tmp_path):
    """The same T1w stored LPS (data and affine changed together, same world) scores the same."""
    ref = t1w_mirror_scores(T1W, MASK, FWD)
    for f in (T1W, MASK):
        img = nb.load(f)
        flip = np.diag([-1.0, -1.0, 1, 1])
        flip[:2, 3] = np.array(img.shape[:2]) - 1
        aff = img.affine @ flip
        o = nb.Nifti1Image(np.asarray(img.dataobj)[::-1, ::-1], aff, img.header)
        o.set_qform(aff, 1)
        o.set_sform(aff, 1)
        nb.save(o, tmp_path / f.name)
    lps = t1w_mirror_scores(tmp_path / T1W.name, tmp_path / MASK.name, FWD)
    for k in ("direct", "mirror", "asymmetry_correlation"):
        assert lps[k] == pytest.approx(ref[k], abs=0.01), k


def test_scores_match_an_independent_computation():
    """nitransforms resamples the masked T1w onto the 1 mm template grid; the mirror is a
    numpy flip of that grid (symmetric about x = 0); both smoothed 4 mm; correlations over the
    template brain (and its mirror)."""
    import nitransforms as nt
    import nitransforms.resampling

    tpl = nb.load(data_file(TEMPLATE))
    tmask = np.asarray(nb.load(data_file(TEMPLATE_MASK)).dataobj) > 0.5
    assert np.allclose(tpl.affine[0, 3], -96) and tpl.shape[0] == 193  # x symmetric about 0
    img = nb.load(T1W)
    masked = nb.Nifti1Image(np.asarray(img.dataobj, np.float32) *
                            (np.asarray(nb.load(MASK).dataobj) > 0.5), img.affine)
    xfm = nt.manip.load(str(FWD), fmt="itk")
    w = np.asarray(nt.resampling.apply(xfm, masked, reference=tpl, order=1).dataobj, np.float64)
    t = ndi.gaussian_filter(np.asarray(tpl.dataobj, np.float64), 4.0)
    w = ndi.gaussian_filter(w, 4.0)
    sel = tmask & tmask[::-1]

    def r(a, b):
        a, b = a[sel] - a[sel].mean(), b[sel] - b[sel].mean()
        return float(a @ b / np.sqrt((a @ a) * (b @ b)))

    mine = t1w_mirror_scores(T1W, MASK, FWD)
    assert mine["direct"] == pytest.approx(r(w, t), abs=0.02)
    assert mine["mirror"] == pytest.approx(r(w[::-1], t), abs=0.02)
    assert mine["asymmetry_correlation"] == pytest.approx(r(w - w[::-1], t - t[::-1]), abs=0.05)


def _boldref_from_t1w(flip: bool) -> nb.Nifti1Image:
    """An EPI-like reference of the same brain: the T1w on a 3 mm grid, contrast inverted inside
    the brain (CSF bright, white matter dark); ``flip`` mirrors its voxel array."""
    img = nb.load(T1W)
    data = np.asarray(img.dataobj, np.float32)
    brain = np.asarray(nb.load(MASK).dataobj) > 0.5
    epi = np.where(brain, data.max() - data, 0.0)
    aff = img.affine @ np.diag([3.0, 3.0, 3.0, 1.0])
    shape = tuple(int(s) for s in np.array(img.shape) // 3)
    ijk = np.indices(shape).reshape(3, -1).T * 3.0
    small = ndi.map_coordinates(ndi.gaussian_filter(epi, 1.2), ijk.T, order=1).reshape(shape)
    if flip:
        small = small[::-1]
    return nb.Nifti1Image(small.astype(np.float32), aff)


def test_boldref_against_its_t1w():
    ok = check_boldref_not_mirrored(_boldref_from_t1w(False), np.eye(4), T1W, MASK, FWD)
    assert ok["passed"] and ok["relative_margin"] > 0.1
    with pytest.raises(InputError, match="mirrored"):
        check_boldref_not_mirrored(_boldref_from_t1w(True), np.eye(4), T1W, MASK, FWD,
                                   bold_path="sub-01_task-rest_bold.nii.gz")
