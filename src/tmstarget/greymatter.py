"""Where a target may lie: grey matter, and (native space) not too deep below the scalp.

Grey matter
-----------
The search region is restricted to grey matter (config ``search.grey_matter``, on by
default; ``search.grey_matter_threshold``): voxels whose grey-matter probability is at least
the threshold. The probability map is, in order of preference,

1. the participant's fMRIPrep ``sub-X[_ses-Y]_space-MNI152NLin2009cAsym[_res-R]_label-GM_probseg``
   (:func:`find_gm_probseg`; fMRIPrep writes it with ``--output-spaces MNI152NLin2009cAsym``);
2. otherwise the template map shipped with tmstarget,
   ``tpl-MNI152NLin2009cAsym_res-02_label-GM_probseg.nii.gz`` (Atropos 3-class segmentation of
   the MNI152NLin2009cAsym brain, made once by ``scripts/make_template_gm_probseg.py``; see
   ``src/tmstarget/data/NOTICE.md``), a population-level prior.

Either is resampled (continuous interpolation) to the BOLD grid when it is on another grid.
The default threshold 0.3 is deliberately permissive: the BOLD is smoothed (6 mm in the named
strategies), the template map does not follow an individual's folding exactly, and a 2 mm voxel
on a 2.5 mm thick ribbon is rarely pure grey matter; 0.5 keeps about 50 % of the default
left-DLPFC region, 0.3 about 60 %.

Depth below the scalp (native space)
------------------------------------
:func:`depth_mask` keeps the search-region voxels whose distance to the nearest scalp point of
the participant's T1w head model (:class:`tmstarget.native.HeadModel`) is at most
``native.max_depth_mm``, after moving the MNI voxel centres into T1w through the same point
transform the native step uses. The distance to the *nearest* scalp point is a lower bound of
the coil-entry depth the native step checks (the entry along the scalp normal is never closer),
so this mask removes every voxel the native step would certainly refuse, before choosing; the
native step's refusal stays as the final check on the chosen target.

Wiring (for the workflow; not done here): when a participant has the native inputs, the
target step loads the head model and the MNI-to-T1w point transform
(:func:`tmstarget.native.build_head_model`, :func:`tmstarget.native.load_point_transform`),
intersects the search region with :func:`depth_mask` before :meth:`TargetFinder.find`, and
records ``n_voxels`` removed in the target JSON; the target rule then depends on the anat
inputs (``discover_anat``), and participants without them keep the MNI-only region (and say so).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nibabel as nb
import numpy as np

from .errors import InputError
from .io import data_file

#: Shipped template grey-matter probability map (2 mm, MNI152NLin2009cAsym).
TEMPLATE_GM_PROBSEG: str = "tpl-MNI152NLin2009cAsym_res-02_label-GM_probseg.nii.gz"
#: Template space of :data:`TEMPLATE_GM_PROBSEG`.
TEMPLATE_GM_SPACE: str = "MNI152NLin2009cAsym"
#: Default grey-matter probability threshold (config ``search.grey_matter_threshold``).
DEFAULT_GM_THRESHOLD: float = 0.3


def find_gm_probseg(fmriprep_dir: str | Path, participant: str, session: str | None = None,
                    space: str = "MNI152NLin2009cAsym", res: str | None = None) -> Path | None:
    """fMRIPrep's grey-matter probability map of a participant in ``space``, if present.

    Looks in ``sub-X/ses-Y/anat`` (when ``session``) then ``sub-X/anat`` for
    ``sub-X_[ses-Y_]…space-<space>_[res-R_]label-GM_probseg.nii[.gz]``. With several
    resolutions, ``res`` picks one (else the finest, i.e. the lowest ``res`` label).

    Returns
    -------
    pathlib.Path or None
    """
    root = Path(fmriprep_dir)
    folders = ([root / f"sub-{participant}" / f"ses-{session}" / "anat"] if session else [])
    folders.append(root / f"sub-{participant}" / "anat")
    pat = re.compile(rf"^sub-{re.escape(participant)}_(?:.*_)?space-{re.escape(space)}_"
                     r"(?:.*_)?label-GM_probseg\.nii(?:\.gz)?$")
    for folder in folders:
        if not folder.is_dir():
            continue
        cands = sorted(p for p in folder.iterdir() if pat.match(p.name) and p.is_file())
        if session is not None and folder.parent.name != f"ses-{session}":
            # participant-level anat: a file naming another session is not ours
            cands = [p for p in cands if "_ses-" not in p.name or f"_ses-{session}_" in p.name]
        if res is not None:
            cands = [p for p in cands if f"_res-{res}_" in p.name] or cands
        if cands:
            def key(p: Path) -> tuple[float, str]:
                m = re.search(r"_res-(\d+)_", p.name)
                return (float(m.group(1)) if m else 0.0, p.name)
            return min(cands, key=key)
    return None


def grey_matter_mask(shape: tuple[int, int, int], affine: np.ndarray,
                     probseg: str | Path | None = None,
                     threshold: float = DEFAULT_GM_THRESHOLD,
                     data_space: str = "MNI152NLin2009cAsym") -> tuple[np.ndarray, str]:
    """Grey-matter mask on a grid (probability >= ``threshold``).

    ``probseg`` (fMRIPrep's own map) is in ``data_space`` already. The shipped template map is in
    MNI152NLin2009cAsym; for another ``data_space`` (MNI152NLin6Asym) it is first moved onto
    the same 2 mm grid through the shipped template transform
    (:func:`tmstarget.spaces.resample_to_grid`, trilinear), then averaged over each BOLD voxel
    as usual.

    Parameters
    ----------
    shape, affine
        The BOLD grid.
    probseg : path, optional
        A GM probability map (fMRIPrep ``label-GM_probseg``) in MNI152NLin2009cAsym; ``None``
        uses the shipped template map.
    threshold : float
        In (0, 1].
    data_space : str
        Template space of the BOLD grid.

    Returns
    -------
    mask : numpy.ndarray of bool
    description : str
    """
    if not 0 < float(threshold) <= 1:
        raise InputError(None, f"search.grey_matter_threshold must be in (0, 1], got "
                         f"{threshold}.", "Use e.g. 0.3.")
    path = Path(probseg) if probseg is not None else data_file(TEMPLATE_GM_PROBSEG)
    try:
        img = nb.load(path)
        data = np.asarray(img.dataobj, dtype=np.float32)
    except Exception as exc:
        raise InputError(path, f"cannot read the grey-matter probability map ({exc}).",
                         "Give a valid 3D NIfTI probability map.") from exc
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise InputError(path, f"the grey-matter map must be 3D, it is {data.ndim}D.",
                         "Give fMRIPrep's label-GM_probseg.")
    moved = ""
    if probseg is None and data_space != TEMPLATE_GM_SPACE:
        from .spaces import resample_to_grid

        data = resample_to_grid(nb.Nifti1Image(data, img.affine), TEMPLATE_GM_SPACE, data_space,
                                img.affine, data.shape, "linear").astype(np.float32)
        img = nb.Nifti1Image(data, img.affine)
        moved = f", moved {TEMPLATE_GM_SPACE} -> {data_space} by the shipped template transform"
    if float(np.nanmax(data)) > 1.0 + 1e-3 or float(np.nanmin(data)) < -1e-3:
        raise InputError(path, "the grey-matter map is not a probability map (values outside "
                         "0-1).", "Give fMRIPrep's label-GM_probseg (probabilities).")
    same = tuple(data.shape) == tuple(shape) and np.allclose(img.affine, affine, atol=1e-3)
    how = ""
    if not same:
        data, how = _grey_matter_fraction(np.nan_to_num(data), img.affine, shape, affine)
    mask = np.nan_to_num(data) >= float(threshold)
    src = (f"the shipped {TEMPLATE_GM_SPACE} template grey-matter map{moved}" if probseg is None
           else f"{path.name}")
    return mask, (f"grey matter (probability >= {float(threshold):g} in {src}{how})")


def _grey_matter_fraction(prob: np.ndarray, prob_affine: np.ndarray, shape: Sequence[int],
                          affine: np.ndarray, n: int = 4) -> tuple[np.ndarray, str]:
    """The mean GM probability over each target voxel's footprint (its partial-volume GM).

    Each target voxel is sampled at ``n**3`` points spread evenly inside it (trilinear on the
    map); on a grid no coarser than the map this is close to point sampling, on a coarse BOLD
    grid (3-4 mm) it is the voxel's grey-matter fraction, which point sampling at the voxel
    centre is not.
    """
    from scipy import ndimage

    from .regions import voxel_centers_mm

    aff = np.asarray(affine, float)
    offs = (np.arange(n) + 0.5) / n - 0.5
    sub = np.stack(np.meshgrid(offs, offs, offs, indexing="ij"), -1).reshape(-1, 3)
    sub_mm = sub @ aff[:3, :3].T  # offsets inside a voxel, in mm (any storage orientation)
    centres = voxel_centers_mm(tuple(shape), aff).reshape(-1, 3)
    inv = np.linalg.inv(np.asarray(prob_affine, float))
    acc = np.zeros(len(centres))
    for o in sub_mm:
        ijk = nb.affines.apply_affine(inv, centres + o).T
        acc += ndimage.map_coordinates(prob, ijk, order=1, mode="constant", cval=0.0)
    return (acc / len(sub_mm)).reshape(tuple(shape)), (
        ", resampled to the BOLD grid as each voxel's mean (partial-volume) probability")


def depth_mask(region: np.ndarray, affine: np.ndarray, to_t1w: Any, model: Any,
               max_depth_mm: float) -> tuple[np.ndarray, dict[str, Any]]:
    """Search-region voxels no deeper than ``max_depth_mm`` below the participant's scalp.

    Parameters
    ----------
    region : numpy.ndarray of bool, 3D
        Search region on the MNI grid.
    affine : numpy.ndarray (4, 4)
        MNI grid affine.
    to_t1w : object with ``map(points) -> points``
        MNI -> T1w point transform (:func:`tmstarget.native.load_point_transform` of
        ``from-T1w_to-MNI152NLin2009cAsym``).
    model : tmstarget.native.HeadModel
        The T1w head model (``tree`` over the scalp points, ``head`` mask, ``lookup``).
    max_depth_mm : float
        ``native.max_depth_mm``.

    Returns
    -------
    mask : numpy.ndarray of bool, 3D
        ``region`` minus voxels deeper than the limit or outside the head.
    info : dict
        ``n_region``, ``n_kept``, ``n_too_deep``, ``n_outside_head``, ``max_depth_mm``,
        ``depth_measure``.
    """
    from .regions import voxel_centers_mm

    region = np.asarray(region, bool)
    idx = np.nonzero(region)
    pts_mni = voxel_centers_mm(region.shape, affine)[idx]
    pts = np.asarray(to_t1w.map(pts_mni), float)
    depth, _ = model.tree.query(pts)
    inside = model.lookup(model.head, pts)
    ok = inside & (depth <= float(max_depth_mm))
    out = np.zeros(region.shape, bool)
    out[tuple(a[ok] for a in idx)] = True
    return out, {"n_region": int(region.sum()), "n_kept": int(ok.sum()),
                 "n_too_deep": int((inside & ~ok).sum()), "n_outside_head": int((~inside).sum()),
                 "max_depth_mm": float(max_depth_mm),
                 "depth_measure": "distance from the voxel centre (in T1w) to the nearest scalp "
                                  "point of the T1w head model"}
