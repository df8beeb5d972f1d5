"""Built-in preprocessing (no containers): raw BIDS -> an fMRIPrep-like derivatives tree.

For sites without fMRIPrep. Uses ANTsPy (``pip install 'tmstarget[preproc]'``) for every
registration, and writes the files the rest of tmstarget reads from fMRIPrep, with fMRIPrep's
names, into ``OUTPUT_DIR/sourcedata/builtin``:

``anat/``
    ``sub-X_desc-preproc_T1w`` (N4 bias-corrected), ``sub-X_desc-brain_mask``,
    ``sub-X_label-{GM,WM,CSF}_probseg``, and the ITK composite transforms
    ``sub-X_from-T1w_to-MNI152NLin2009cAsym_mode-image_xfm.h5`` /
    ``sub-X_from-MNI152NLin2009cAsym_to-T1w_mode-image_xfm.h5`` written by ANTs itself
    (the same kind of file fMRIPrep writes).
``func/``
    per run: ``..._space-MNI152NLin2009cAsym_res-2_desc-preproc_bold`` (+ JSON),
    ``..._space-MNI152NLin2009cAsym_res-2_desc-brain_mask``, ``..._space-..._res-2_boldref``,
    ``..._desc-confounds_timeseries.tsv`` + ``.json`` (fMRIPrep column names, see
    :mod:`tmstarget.confounds`), ``..._from-boldref_to-T1w_mode-image_desc-coreg_xfm.txt``,
    ``..._desc-hmc_motion.tsv`` and a ``..._desc-builtin_qc.json``.
``figures/``
    QC images: T1w on the template, brain mask on the T1w, BOLD reference on the T1w, motion
    traces.

Steps: dummy-volume detection (fMRIPrep/nipype rule: leading global-signal outliers among the
first 50 volumes); rigid head-motion correction of each volume to a BOLD reference (median
of the first steady volumes) by least-squares Gauss-Newton alignment (SPM-style; or ANTs,
``motion_estimator: ants``) with smoothing and sampling set by ``motion_resolution_mm`` (the
estimated transforms are in world mm, so they apply at full resolution); rigid BOLD -> T1w
coregistration (mutual information); T1w N4, brain extraction by template registration and
three-class segmentation; T1w -> MNI152NLin2009cAsym affine + SyN normalisation; one
interpolation (cubic B-spline) from each original volume to the 2 mm MNI grid through motion,
coregistration and normalisation composed.

Known limits (also stated in every report): no susceptibility-distortion correction, no
slice-timing correction, no boundary-based registration, a coarser normalisation than
fMRIPrep's (registration grid ``registration_resolution_mm``, default 2 mm), confounds
computed in MNI space.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd
from scipy import ndimage as ndi
from scipy.spatial.transform import Rotation

from . import __version__
from .confounds import compute_confounds, write_confounds
from .errors import ConfigError, InputError
from .io import data_file as _data_file
from .io import write_json

__all__ = [
    "MOTION_COLUMNS", "SPACE", "builtin_available", "detect_dummy_volumes",
    "motion_parameters", "preprocess_participant",
]

#: Name in ``GeneratedBy`` (the report looks for it to label the built-in path).
GENERATOR_NAME = "tmstarget-builtin-preproc"
SPACE = "MNI152NLin2009cAsym"
MOTION_COLUMNS = ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z")
#: Stated in the dataset description, the BOLD sidecars and every report.
LIMITS = ("built-in preprocessing (ANTsPy): no susceptibility-distortion correction, no "
          "slice-timing correction, rigid mutual-information BOLD-to-T1w coregistration (no "
          "boundary-based registration), SyN normalisation on a coarser grid than fMRIPrep's, "
          "confounds computed in MNI space")

DEFAULTS: dict[str, Any] = {
    "dummy_scans": None,
    "motion_resolution_mm": 4.0,
    "motion_estimator": "gauss-newton",
    "registration_resolution_mm": 2.0,
    "syn_iterations": [70, 50, 10],
    "interpolation_order": 3,
    "deterministic": True,
}


#: Name of the stage running now (benchmarks/bench_builtin.py samples memory per stage).
CURRENT_STAGE: str = ""


#: What is being preprocessed (``sub-01``, ``sub-01 run task-rest_run-1``) and since when,
#: for the progress lines.
_PROGRESS: dict[str, Any] = {"who": "", "start": None}


def _begin(stage: str) -> float:
    """Publish the stage starting now in :data:`CURRENT_STAGE`; its start time.

    A progress line (stage, time since the participant started) goes to the step's log
    (``sys.stderr`` is redirected there by :func:`tmstarget.smk.run_step`) and to the terminal.
    """
    global CURRENT_STAGE
    CURRENT_STAGE = stage
    now = time.perf_counter()
    if _PROGRESS["start"] is not None:
        el = int(now - _PROGRESS["start"])
        line = (f"[tmstarget] built-in preprocessing {_PROGRESS['who']}: {stage} "
                f"(elapsed {el // 60:d}:{el % 60:02d})")
        streams = [sys.stderr] + ([sys.__stderr__] if sys.__stderr__ not in (None, sys.stderr)
                                  else [])
        for stream in streams:
            try:
                print(line, file=stream, flush=True)
            except (OSError, ValueError):  # pragma: no cover - no terminal left
                pass
    return now


def builtin_available() -> bool:
    """True when ANTsPy (``antspyx``) can be imported."""
    try:
        import ants  # noqa: F401
    except Exception:  # noqa: BLE001  # pragma: no cover - depends on the install
        return False
    return True


#: Seed of ANTs' random metric sampling: without it two runs of the same registration differ
#: (by ~0.01 mm in the motion estimates), so reruns would not reproduce their outputs.
ANTS_RANDOM_SEED = 20261124


def _ants():
    try:
        import ants
    except Exception as exc:  # noqa: BLE001  # pragma: no cover - depends on the install
        raise ConfigError(
            None, f"the built-in preprocessing needs ANTsPy, which is not installed ({exc}).",
            "pip install 'tmstarget[preproc]' (or set preprocessing.fmriprep_image to use "
            "fMRIPrep instead).") from None
    if getattr(ants.config, "_random_seed", None) is None:
        ants.config._random_seed = ANTS_RANDOM_SEED
    return ants


# --------------------------------------------------------------------------- pure helpers
def detect_dummy_volumes(data: np.ndarray, mask: np.ndarray | None = None,
                         thresh: float = 3.5, max_volumes: int = 50) -> int:
    """Number of leading non-steady-state volumes (fMRIPrep/nipype ``is_outlier`` rule).

    The global signal of the first ``max_volumes`` volumes is scored with the modified
    z-score ``0.6745 (x - median) / MAD``; leading volumes scoring above ``thresh`` count.

    Parameters
    ----------
    data : numpy.ndarray, shape (X, Y, Z, T)
    mask : numpy.ndarray of bool, shape (X, Y, Z), optional
        Voxels of the global signal (default: all voxels).
    thresh : float
    max_volumes : int

    Returns
    -------
    int
    """
    n = min(max_volumes, data.shape[-1])
    block = np.asarray(data[..., :n], dtype=np.float64)
    gs = block[mask].mean(axis=0) if mask is not None else block.reshape(-1, n).mean(axis=0)
    med = np.median(gs)
    mad = np.median(np.abs(gs - med))
    if mad == 0:
        return 0
    z = 0.6745 * (gs - med) / mad
    count = 0
    for value in z:
        if value <= thresh:
            break
        count += 1
    return count


def motion_parameters(mats: np.ndarray, centre_mm: Sequence[float]) -> np.ndarray:
    """Six rigid parameters of reference -> volume point maps, about a centre.

    Parameters
    ----------
    mats : numpy.ndarray, shape (T, 4, 4)
        RAS+ point maps ``p_volume = M p_reference``.
    centre_mm : sequence of 3 float
        Centre of the brain (RAS+ mm); translations are its displacement.

    Returns
    -------
    numpy.ndarray, shape (T, 6)
        ``trans_x/y/z`` (mm) and ``rot_x/y/z`` (rad, extrinsic x-y-z Euler angles), the
        head motion ``M``; :func:`tmstarget.simulate_raw.motion_matrices` is its inverse.
    """
    mats = np.asarray(mats, dtype=float)
    c = np.asarray(centre_mm, dtype=float)
    rot = Rotation.from_matrix(mats[:, :3, :3]).as_euler("xyz")
    trans = np.einsum("tij,j->ti", mats[:, :3, :3], c) + mats[:, :3, 3] - c
    return np.column_stack([trans, rot])


def _ras_from_ants(tx: Any) -> np.ndarray:
    """RAS 4x4 point map (fixed -> moving) of an ANTs linear transform."""
    from .itk import ras_from_itk_parameters

    return ras_from_itk_parameters(np.asarray(tx.parameters), np.asarray(tx.fixed_parameters))


def _to_ants(img: nib.Nifti1Image, data: np.ndarray | None = None):
    """ANTs image from a nibabel image (LPS physical frame, same world)."""
    ants = _ants()
    arr = np.asarray(img.dataobj if data is None else data, dtype=np.float32)
    aff = img.affine
    zooms = np.sqrt((aff[:3, :3] ** 2).sum(axis=0))
    direction = aff[:3, :3] / zooms
    lps = np.diag([-1.0, -1.0, 1.0])
    return ants.from_numpy(arr, origin=tuple(lps @ aff[:3, 3]), spacing=tuple(zooms),
                           direction=lps @ direction)


def _from_ants(img: Any) -> nib.Nifti1Image:
    """nibabel image (RAS affine) from an ANTs image."""
    lps = np.diag([-1.0, -1.0, 1.0])
    aff = np.eye(4)
    aff[:3, :3] = lps @ np.asarray(img.direction) @ np.diag(img.spacing)
    aff[:3, 3] = lps @ np.asarray(img.origin)
    return nib.Nifti1Image(img.numpy(), aff)


def storage_info(img: nib.Nifti1Image) -> dict[str, Any]:
    """How a raw image is stored: axis codes, obliquity, qform/sform agreement (for the QC).

    ``oblique_deg`` is the largest angle between a voxel axis and the nearest world axis.
    """
    aff = np.asarray(img.affine, dtype=float)
    cosines = aff[:3, :3] / np.sqrt((aff[:3, :3] ** 2).sum(axis=0))
    oblique = float(np.degrees(np.arccos(np.clip(np.abs(cosines).max(axis=0), 0, 1))).max())
    info: dict[str, Any] = {"orientation": "".join(nib.aff2axcodes(aff)),
                            "oblique_deg": round(oblique, 2),
                            "voxel_mm": [round(float(v), 4) for v in
                                         np.sqrt((aff[:3, :3] ** 2).sum(axis=0))],
                            "shape": [int(v) for v in img.shape]}
    hdr = img.header
    if isinstance(hdr, nib.Nifti1Header):
        info["qform_code"], info["sform_code"] = int(hdr["qform_code"]), int(hdr["sform_code"])
        if info["qform_code"] > 0 and info["sform_code"] > 0:
            corners = np.array([[i, j, k] for i in (0, img.shape[0] - 1)
                                for j in (0, img.shape[1] - 1) for k in (0, img.shape[2] - 1)])
            diff = (nib.affines.apply_affine(img.get_qform(), corners)
                    - nib.affines.apply_affine(img.get_sform(), corners))
            info["qform_sform_max_difference_mm"] = round(float(np.abs(diff).max()), 5)
    return info


#: Grid (mm) the conformed affine's translation is snapped to (see :func:`conform`).
CONFORM_TRANSLATION_GRID_MM = 1e-3


def conform(img: nib.Nifti1Image, dtype: Any = np.float32) -> nib.Nifti1Image:
    """The image stored in RAS order (closest canonical), same world, scaled values as ``dtype``.

    Like fMRIPrep (and ``nibabel.as_closest_canonical``), only the voxel axes are permuted and
    flipped: no resampling, so no value changes and every voxel keeps its world coordinates. An
    oblique image stays oblique (its affine keeps the rotation; only the axis order and signs
    change). The same scan stored LAS, LPS, RAS or with a flipped slice axis therefore gives
    the same array and the same affine, and every registration that follows sees the same
    grid: ANTs' regular metric sampling, its coarse resampling grids (anchored at voxel 0) and
    the motion-correction grid depend on the storage order, and on the real participant that
    dependence moved the framewise displacement of single volumes by up to 0.5 mm, enough to
    censor 28 instead of 3 volumes (measured; README, "Real scanner data").

    The header stores its affine in float32, so two storages of one world carry translations
    that differ in the last bit (~1e-5 mm), and ANTs' optimisers turn even that into motion
    estimates ~0.005 mm apart (measured). The conformed affine is therefore snapped: its 3x3
    part to float32 (flips and permutations change no bit there) and its translation to
    :data:`CONFORM_TRANSLATION_GRID_MM` (0.001 mm, far below any anatomical meaning), so the
    re-stored copies of a scan carry the same numbers. The values are read with the header's
    scaling (e.g. a Philips ``scl_slope``) applied.
    """
    ornt = nib.orientations.io_orientation(img.affine)
    data = nib.orientations.apply_orientation(np.asarray(img.dataobj, dtype=dtype), ornt)
    aff = img.affine @ nib.orientations.inv_ornt_aff(ornt, img.shape[:3])
    aff[:3, :3] = aff[:3, :3].astype(np.float32)
    aff[:3, 3] = np.round(aff[:3, 3] / CONFORM_TRANSLATION_GRID_MM) * CONFORM_TRANSLATION_GRID_MM
    out = nib.Nifti1Image(np.ascontiguousarray(data), aff)
    out.header.set_xyzt_units("mm", "sec")
    return out


def header_tr(img: nib.Nifti1Image) -> float | None:
    """TR (s) from the NIfTI header (``pixdim[4]`` with its time unit), or None when unset."""
    zooms = img.header.get_zooms()
    if len(zooms) < 4 or not np.isfinite(zooms[3]) or zooms[3] <= 0:
        return None
    unit = img.header.get_xyzt_units()[1] if isinstance(img.header, nib.Nifti1Header) else "sec"
    scale = {"msec": 1e-3, "usec": 1e-6}.get(unit, 1.0)
    return float(zooms[3]) * scale


def _write_nifti_gz(img: nib.Nifti1Image, path: Path) -> None:
    """Write ``img`` as ``.nii.gz``: ISA-L (level 1, ~2x faster than zlib at the same size)
    when ``isal`` is installed, else nibabel's writer. The gzip header carries mtime 0, as
    nibabel's does, so that reruns give the same bytes; the content is nibabel's either way."""
    try:
        from isal import igzip
    except ImportError:  # pragma: no cover - isal is a dependency
        nib.save(img, str(path))
        return
    with open(path, "wb") as fh, igzip.IGzipFile(fileobj=fh, mode="wb", compresslevel=1,
                                                mtime=0) as gz:
        img.to_stream(gz)


def _save(img: nib.Nifti1Image, path: Path, dtype: Any = np.float32, code: int = 1,
          tr: float | None = None) -> Path:
    img = nib.Nifti1Image(np.asarray(img.dataobj).astype(dtype, copy=False), img.affine)
    img.header.set_data_dtype(dtype)
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(img.affine, code=code)
    img.set_sform(img.affine, code=code)
    if tr is not None:
        img.header.set_zooms((*img.header.get_zooms()[:3], float(tr)))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.nii.gz")
    try:
        _write_nifti_gz(img, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


# --------------------------------------------------------------------------- anatomy
@dataclass
class AnatResult:
    """Outputs of :func:`anatomical_workflow` (paths in the derivatives tree)."""

    t1w: Path
    brain_mask: Path
    probseg: dict[str, Path]
    to_mni: Path  # from-T1w_to-MNI (pull: MNI points -> T1w points)
    from_mni: Path  # from-MNI_to-T1w (pull: T1w points -> MNI points)
    timings: dict[str, float] = field(default_factory=dict)
    #: How the raw T1w was stored (:func:`storage_info`), before :func:`conform`.
    input_storage: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def in_folder(cls, anat_dir: Path, label: str, timings: dict[str, float] | None = None
                  ) -> AnatResult:
        """The fMRIPrep-style file names of one participant's ``anat/`` outputs."""
        pre = anat_dir / f"sub-{label}"
        return cls(t1w=Path(f"{pre}_desc-preproc_T1w.nii.gz"),
                   brain_mask=Path(f"{pre}_desc-brain_mask.nii.gz"),
                   probseg={k: Path(f"{pre}_label-{k}_probseg.nii.gz")
                            for k in ("CSF", "GM", "WM")},
                   to_mni=Path(f"{pre}_from-T1w_to-{SPACE}_mode-image_xfm.h5"),
                   from_mni=Path(f"{pre}_from-{SPACE}_to-T1w_mode-image_xfm.h5"),
                   timings=dict(timings or {}))


def anatomical_workflow(t1w_path: Path, anat_dir: Path, label: str, work: Path,
                        settings: Mapping[str, Any], threads: int = 1) -> AnatResult:
    """N4, template-based brain extraction, tissue classes and normalisation of one T1w.

    Parameters
    ----------
    t1w_path : Path
        Raw T1w image.
    anat_dir : Path
        Output ``anat/`` folder.
    label : str
        Participant label.
    work : Path
        Scratch folder for ANTs transform files.
    settings : mapping
        Built-in settings (:data:`DEFAULTS` keys).
    threads : int

    Returns
    -------
    AnatResult
    """
    ants = _ants()
    timings: dict[str, float] = {}
    t0 = _begin("t1w_n4")
    raw = nib.load(str(t1w_path))
    if raw.ndim != 3:
        raise InputError(t1w_path, f"the T1w image has {raw.ndim} dimensions; a 3D image is "
                         "needed.", "Use a single 3D T1w image.")
    stored = storage_info(raw)
    raw = conform(raw)  # RAS storage, same world: results cannot depend on the storage order
    t1 = _to_ants(raw)
    n4 = _n4(t1)
    timings["t1w_n4_s"] = time.perf_counter() - t0

    # 1) whole-head affine to the low-resolution whole-head template
    t0 = _begin("t1w_affine")
    tpl = "tpl-MNI152NLin2009cAsym_res-0"
    head_tpl = ants.image_read(str(_data_file(f"{tpl}2_T1w_reference.nii.gz")))
    brain_tpl = ants.image_read(str(_data_file(f"{tpl}1_desc-brain_T1w.nii.gz")))
    tpl_mask = ants.image_read(str(_data_file(f"{tpl}1_desc-brain_mask.nii.gz")))
    n4_lo = ants.resample_image(n4, (3.0, 3.0, 3.0), use_voxels=False, interp_type=0)
    aff = ants.registration(head_tpl, n4_lo, type_of_transform="Affine",
                            outprefix=str(work / "t1w_head_"))
    init_mask = ants.apply_transforms(n4, tpl_mask, aff["fwdtransforms"], whichtoinvert=[True],
                                      interpolator="nearestNeighbor")
    # a tight first mask: the 1-voxel dilation keeps the brain edge; wider margins let dura and
    # skull pull the SyN (measured on the raw sample: 1 mm -> landmark errors ~1 mm smaller
    # than 4 mm)
    init_mask = ants.iMath(init_mask, "MD", 1)
    timings["t1w_affine_s"] = time.perf_counter() - t0

    # 2) SyN of the (loosely) skull-stripped T1w to the brain template
    t0 = _begin("t1w_syn")
    res = float(settings["registration_resolution_mm"])
    fixed = ants.resample_image(brain_tpl, (res,) * 3, use_voxels=False, interp_type=0)
    moving = ants.resample_image(n4 * init_mask, (res,) * 3, use_voxels=False, interp_type=0)
    ants.registration(fixed, moving, type_of_transform="SyN",
                            initial_transform=aff["fwdtransforms"][0],
                            reg_iterations=tuple(int(i) for i in settings["syn_iterations"]),
                            write_composite_transform=True, outprefix=str(work / "t1w_mni_"))
    timings["t1w_syn_s"] = time.perf_counter() - t0

    t0 = _begin("t1w_brain_seg")
    inv_comp = str(work / "t1w_mni_InverseComposite.h5")
    brain = ants.apply_transforms(n4, tpl_mask, [inv_comp], interpolator="nearestNeighbor")
    brain = ants.iMath(ants.iMath(brain, "MC", 1), "FillHoles")
    # three tissue classes (k-means-initialised Atropos) on the registration grid: the
    # classes only feed the WM/CSF confound masks on the 2 mm MNI grid
    lo = ants.resample_image(n4, (res,) * 3, use_voxels=False, interp_type=0)
    brain_lo = ants.resample_image(brain, (res,) * 3, use_voxels=False, interp_type=1)
    probs = dict(zip(("CSF", "GM", "WM"),
                     _kmeans_tissues(ants.iMath(lo, "Normalize") * brain_lo, brain_lo, k=3),
                     strict=True))
    timings["t1w_brain_seg_s"] = time.perf_counter() - t0

    anat_dir.mkdir(parents=True, exist_ok=True)
    out = AnatResult.in_folder(anat_dir, label, timings)
    out.input_storage = stored
    _save(_from_ants(n4), out.t1w)
    _save(_from_ants(brain), out.brain_mask, dtype=np.uint8)
    for k, v in probs.items():
        _save(_from_ants(v), out.probseg[k])
    shutil.copyfile(work / "t1w_mni_Composite.h5", out.to_mni)
    shutil.copyfile(inv_comp, out.from_mni)
    return out


def _kmeans_tissues(image: Any, mask: Any, k: int = 3) -> list[Any]:
    """Probability images of ``k`` intensity classes (darkest first), Atropos k-means + MRF.

    ``ants.kmeans_segmentation`` with Atropos' random seed switched off (``-r 0``: a constant
    seed), so that the classes are the same on every run.
    """
    ants = _ants()
    mask = ants.iMath(mask, "FillHoles").threshold_image(1, 2)
    seg = ants.atropos(a=ants.iMath(image, "Normalize"), x=mask, i=f"kmeans[{k}]",
                       m="[0.1,1x1x1]", c="[5,0]", r=0)
    return list(seg["probabilityimages"])


def itk_threads(settings: Mapping[str, Any], threads: int) -> int:
    """ITK/ANTs threads for the built-in stage: 1 when ``deterministic`` (the default).

    Multi-threaded ANTs registrations (SyN, affine) give slightly different transforms from
    run to run; single-threaded ones are bit-identical (measured on the raw sample).
    """
    deterministic = settings.get("deterministic", DEFAULTS["deterministic"])
    return 1 if deterministic else max(1, int(threads))


def _n4(t1: Any) -> Any:
    """N4 bias correction with the field fitted on a 2 mm copy (the field is smooth).

    Fitting on the 1 mm image took 45-120 s per T1w on 2 cores; on a 2 mm copy with a shrink
    factor of 4 and 50/50/30 iterations it takes ~9 s (one thread). The field is resampled
    (linear) to the full grid, scaled to median 1 inside the head (so intensities keep their
    units) and divided out.
    """
    ants = _ants()
    lo = ants.resample_image(t1, (2.0, 2.0, 2.0), use_voxels=False, interp_type=0)
    field = ants.n4_bias_field_correction(lo, shrink_factor=4, return_bias_field=True,
                                          convergence={"iters": [50, 50, 30], "tol": 1e-6})
    arr = ants.resample_image_to_target(field, t1, interp_type="linear").numpy()
    img = t1.numpy()
    head = img > np.percentile(img, 75)
    arr = np.where(arr > 1e-3, arr, 1.0)
    arr = arr / np.median(arr[head]) if np.any(head) else arr
    return t1.new_image_like(img / arr)


# --------------------------------------------------------------------------- function
@dataclass
class RunResult:
    """What :func:`functional_workflow` measured for one run."""

    n_dummy: int
    motion: np.ndarray
    timings: dict[str, float]
    files: dict[str, str]
    qc: dict[str, Any]


def _bold_reference(vols: np.ndarray, n_dummy: int, n_ref: int = 20) -> np.ndarray:
    """Temporal median of the first steady volumes."""
    start = min(n_dummy, vols.shape[-1] - 1)
    return np.median(vols[..., start:start + n_ref], axis=-1).astype(np.float32)


#: Head-motion estimators (``preprocessing.builtin.motion_estimator``).
MOTION_ESTIMATORS = ("gauss-newton", "ants")


def _check_estimator(name: str) -> None:
    if name not in MOTION_ESTIMATORS:
        raise ConfigError(None, f"preprocessing.builtin.motion_estimator {name!r} is not known.",
                          f"Use one of {', '.join(MOTION_ESTIMATORS)}.")


#: Levels of the Gauss-Newton estimator: (smoothing sigma, sample spacing), both in units of
#: the motion grid ``resolution_mm``; at most this many iterations per level.
GN_LEVELS: tuple[tuple[float, float], ...] = ((1.0, 2.0), (0.5, 1.0))
GN_MAX_ITER = 30
#: Convergence: an update smaller than this (mm of translation; rad of rotation x 50 mm).
GN_TOL_MM = 1e-4


class _GaussNewtonRigid:
    """Rigid, least-squares alignment of volumes to a reference (inverse-compositional
    Gauss-Newton, as in SPM's realign: Friston et al. 1995, Hum Brain Mapp 3:165).

    The reference's smoothed image and its spatial gradient are sampled once, at points of
    its head on a lattice about ``spacing`` mm apart, per level; each volume is smoothed the
    same way and resampled (trilinear) at the current estimate of the reference -> volume
    point map ``T`` only at those points. The residual ``s g(T x) - f(x)`` (``s`` a global
    intensity scale, fitted in closed form each iteration) is linearised with the reference's
    gradient, and the update ``W`` (rotation about the head centre and a translation) is
    composed as ``T <- T W^-1``. Points mapped outside the volume's field of view drop out.
    Everything is plain numpy/scipy in a fixed order, so results are bit-identical on a rerun.
    """

    def __init__(self, ref: np.ndarray, affine: np.ndarray, resolution_mm: float) -> None:
        self.affine = np.asarray(affine, dtype=float)
        self.inv = np.linalg.inv(self.affine)
        self.zooms = np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0))
        self.shape = np.asarray(ref.shape[:3])
        ref = np.asarray(ref, dtype=np.float64)
        pos = ref[ref > 0]
        thr = 0.1 * np.percentile(pos, 98) if pos.size else 0.0
        head = ndi.binary_dilation(ref > thr, iterations=1)
        ijk_head = np.argwhere(head)
        self.centre = nib.affines.apply_affine(self.affine, ijk_head.mean(axis=0)) \
            if ijk_head.size else nib.affines.apply_affine(self.affine, (self.shape - 1) / 2)
        a_inv_t = self.inv[:3, :3].T  # voxel gradient -> world gradient
        self.levels = []
        for sig, spacing in GN_LEVELS:
            sigma_vox = sig * resolution_mm / self.zooms
            step = np.maximum(1, np.round(spacing * resolution_mm / self.zooms)).astype(int)
            sub = np.zeros(head.shape, dtype=bool)
            sub[::step[0], ::step[1], ::step[2]] = True
            ijk = np.argwhere(head & sub)
            f_s = ndi.gaussian_filter(ref, sigma_vox, mode="nearest")
            grads = np.gradient(f_s)
            f = f_s[tuple(ijk.T)]
            g_vox = np.stack([g[tuple(ijk.T)] for g in grads], axis=1)
            g_w = g_vox @ a_inv_t.T
            x = nib.affines.apply_affine(self.affine, ijk)
            d = x - self.centre
            jac = np.concatenate([g_w, np.cross(d, g_w)], axis=1)
            self.levels.append({"sigma": sigma_vox, "x": x, "f": f, "J": jac})

    def estimate(self, vol: np.ndarray, start: np.ndarray | None = None) -> np.ndarray:
        """Reference -> volume point map (4x4 RAS) of one volume."""
        t_map = np.eye(4) if start is None else np.array(start, dtype=float)
        vol = np.asarray(vol, dtype=np.float64)
        hi = self.shape - 1
        c = self.centre
        for lev in self.levels:
            g_s = ndi.gaussian_filter(vol, lev["sigma"], mode="nearest")
            x, f, jac = lev["x"], lev["f"], lev["J"]
            for _ in range(GN_MAX_ITER):
                m = self.inv @ t_map
                v = x @ m[:3, :3].T + m[:3, 3]
                ok = np.all((v >= 0) & (v <= hi), axis=1)
                if ok.sum() < 50:
                    break
                g = ndi.map_coordinates(g_s, v[ok].T, order=1, mode="nearest")
                fo, jo = f[ok], jac[ok]
                gg = float(np.einsum("i,i->", g, g))
                s = float(np.einsum("i,i->", fo, g)) / gg if gg > 0 else 1.0
                r = s * g - fo
                h = np.einsum("ni,nj->ij", jo, jo)
                b = np.einsum("ni,n->i", jo, r)
                dp = np.linalg.solve(h, b)
                w = np.eye(4)
                w[:3, :3] = Rotation.from_rotvec(dp[3:]).as_matrix()
                w[:3, 3] = c + dp[:3] - w[:3, :3] @ c
                t_map = t_map @ np.linalg.inv(w)
                if max(float(np.abs(dp[:3]).max()), 50.0 * float(np.abs(dp[3:]).max())) \
                        < GN_TOL_MM:
                    break
        return t_map


def _motion_correct(bold_img: nib.Nifti1Image, data: np.ndarray, ref: np.ndarray,
                    resolution_mm: float, estimator: str = "gauss-newton") -> np.ndarray:
    """Reference -> volume rigid point maps (T, 4, 4) RAS.

    ``estimator="gauss-newton"`` (default): :class:`_GaussNewtonRigid`, each volume started
    from the previous volume's estimate (head motion is continuous), on a lattice and with
    smoothing set by ``resolution_mm``; ~0.1 s per volume. ``"ants"``: one ANTs registration
    per volume on a grid no finer than ``resolution_mm`` (mean squares, two levels, 50/20
    iterations; ~0.8 s per volume), the estimator of earlier releases.
    """
    _check_estimator(estimator)
    if estimator == "gauss-newton":
        est = _GaussNewtonRigid(ref, bold_img.affine, resolution_mm)
        mats = np.zeros((data.shape[-1], 4, 4))
        prev = None
        for t in range(data.shape[-1]):
            mats[t] = prev = est.estimate(data[..., t], prev)
        return mats
    ants = _ants()
    zooms = np.sqrt((np.asarray(bold_img.affine)[:3, :3] ** 2).sum(axis=0))
    target = tuple(np.maximum(zooms, resolution_mm))
    first_vol = bold_img.slicer[..., 0] if bold_img.ndim == 4 else bold_img

    def prep(arr: np.ndarray):
        im = _to_ants(first_vol, arr)
        if np.any(np.asarray(target) > zooms + 1e-6):
            im = ants.resample_image(im, target, use_voxels=False, interp_type=0)
        return im

    fixed = prep(ref)
    mats = np.zeros((data.shape[-1], 4, 4))
    with tempfile.TemporaryDirectory(prefix="tmstarget-hmc-") as tmp:
        for t in range(data.shape[-1]):
            reg = ants.registration(fixed, prep(data[..., t]), type_of_transform="Rigid",
                                    aff_metric="meansquares", aff_iterations=(50, 20),
                                    aff_shrink_factors=(2, 1), aff_smoothing_sigmas=(1, 0),
                                    outprefix=os.path.join(tmp, f"v{t:05d}_"))
            mats[t] = _ras_from_ants(ants.read_transform(reg["fwdtransforms"][0]))
            for f in reg["fwdtransforms"] + reg["invtransforms"]:
                if os.path.exists(f):
                    os.remove(f)
    return mats


#: Grid of the T1w brain in the BOLD -> T1w coregistration: no finer than this (mm).
COREG_GRID_MM = 2.0


def _coregister(ref_img: nib.Nifti1Image, anat: AnatResult, work: Path) -> np.ndarray:
    """T1w -> boldref rigid point map (RAS 4x4), mutual information on the brain.

    The T1w brain is resampled (linear) to a grid no finer than :data:`COREG_GRID_MM`: on the
    real participant's 0.7 x 0.67 x 0.67 mm T1w (40 M voxels) the registration at full
    resolution took 314 s for a 3 mm BOLD reference. 2 mm (finer than any BOLD it is aligned
    to) instead of 1 mm: 6x faster on the 2.5 mm benchmark run, and the transform moves brain
    points by 0.15-0.2 mm on average (0.5 mm at most), while both differ from the simulated
    truth by ~1.2 mm on average (measured 2026-12-04, issue 21).
    """
    ants = _ants()
    t1 = ants.image_read(str(anat.t1w))
    brain = ants.image_read(str(anat.brain_mask))
    fixed = t1 * brain
    if np.any(np.asarray(fixed.spacing) < COREG_GRID_MM - 1e-6):
        fixed = ants.resample_image(fixed, (COREG_GRID_MM,) * 3, use_voxels=False,
                                    interp_type=0)
    moving = _to_ants(ref_img)
    reg = ants.registration(fixed, moving, type_of_transform="Rigid", aff_metric="mattes",
                            outprefix=str(work / "coreg_"))
    return _ras_from_ants(ants.read_transform(reg["fwdtransforms"][0]))


def _mirror_check(ref_img: nib.Nifti1Image, coreg: np.ndarray, anat: AnatResult,
                  bold_path: Path) -> dict[str, Any]:
    """Refuse a BOLD run whose reference is left-right mirrored against the T1w
    (:func:`tmstarget.mirror.check_boldref_not_mirrored`); the scores go to the run's QC."""
    from .mirror import check_boldref_not_mirrored

    return check_boldref_not_mirrored(ref_img, coreg, anat.t1w, anat.brain_mask, anat.to_mni,
                                      bold_path=bold_path)


def _mni_grid() -> tuple[np.ndarray, np.ndarray]:
    img = nib.load(str(_data_file("tpl-MNI152NLin2009cAsym_res-02_desc-brain_mask.nii.gz")))
    return np.asarray(img.dataobj) > 0.5, img.affine


#: Sidecar and header TR may differ by this fraction before the run is refused.
TR_TOLERANCE = 0.01


def check_tr(bold_path: Path, sidecar_tr: float | None, header: float | None) -> float:
    """The run's TR: the sidecar's ``RepetitionTime``, refused when the header disagrees.

    On real data the two can disagree (dcm2niix estimated 1.79 s for a 2.0 s Philips run); the
    BIDS validator rejects such a dataset, and a wrong TR shifts every frequency of the
    band-pass filter, so tmstarget refuses it too rather than pick one silently.
    """
    side = bold_path.with_name(bold_path.name.split(".nii")[0] + ".json")
    if sidecar_tr is not None:
        tr = float(sidecar_tr)
        if not np.isfinite(tr) or tr <= 0:
            raise InputError(side, f"RepetitionTime is {sidecar_tr!r}.",
                             "Set RepetitionTime to the run's TR in seconds.")
        if header is not None and header > 0 and abs(header - tr) > TR_TOLERANCE * tr:
            raise InputError(side, f"RepetitionTime {tr:g} s disagrees with the NIfTI header of "
                             f"{bold_path.name} ({header:g} s, pixdim[4]).",
                             "Find the true TR (scanner protocol or DICOM RepetitionTime) and "
                             "correct the wrong one (sidecar RepetitionTime or the header's "
                             "pixdim[4]); the BIDS validator rejects this dataset too.")
        return tr
    if header is None:
        raise InputError(bold_path, "no RepetitionTime in the JSON sidecar and none in the "
                         "header.", "Add RepetitionTime (seconds) to the BOLD JSON sidecar.")
    return float(header)


def functional_workflow(bold_path: Path, anat: AnatResult, func_dir: Path, stem: str,
                        work: Path, settings: Mapping[str, Any],
                        tr_hint: float | None = None, threads: int = 1) -> RunResult:
    """Motion correction, coregistration, one-step resampling to MNI and confounds of one run.

    Parameters
    ----------
    bold_path : Path
        Raw BOLD image (4D).
    anat : AnatResult
    func_dir : Path
        Output ``func/`` folder.
    stem : str
        BIDS stem of the run (``sub-X[_ses-Y]_task-Z[_run-N]``).
    work : Path
        Scratch folder.
    settings : mapping
        Built-in settings (:data:`DEFAULTS` keys).
    tr_hint : float, optional
        RepetitionTime from the sidecar.
    threads : int
        Volumes resampled in parallel (each volume is computed the same way on any number of
        threads, so the output does not depend on it).

    Returns
    -------
    RunResult
    """
    from concurrent.futures import ThreadPoolExecutor

    from .native import load_point_transform

    timings: dict[str, float] = {}
    t0 = _begin("read")
    raw = nib.load(str(bold_path))
    if raw.ndim != 4 or raw.shape[-1] < 10:
        raise InputError(bold_path, f"the BOLD image must be 4D with at least 10 volumes "
                         f"(shape {raw.shape}).", "Check the file (was the run cut short?).")
    tr = check_tr(bold_path, tr_hint, header_tr(raw))
    stored = storage_info(raw)
    img = conform(raw)  # RAS storage, same world: results cannot depend on the storage order
    del raw
    data = np.asarray(img.dataobj)
    n_t = data.shape[-1]
    timings["read_s"] = time.perf_counter() - t0

    t0 = _begin("reference")
    mean = data.mean(axis=-1)
    head = mean > 0.1 * np.percentile(mean[mean > 0], 98) if np.any(mean > 0) else mean > 0
    n_dummy = (int(settings["dummy_scans"]) if settings.get("dummy_scans") is not None
               else detect_dummy_volumes(data, head))
    if n_dummy >= n_t - 10:
        raise InputError(bold_path, f"{n_dummy} of {n_t} volumes are non-steady-state.",
                         "Check the run, or set preprocessing.builtin.dummy_scans.")
    ref = _bold_reference(data, n_dummy)
    timings["reference_s"] = time.perf_counter() - t0

    t0 = _begin("motion_correction")
    mats = _motion_correct(img, data, ref, float(settings["motion_resolution_mm"]),
                           str(settings.get("motion_estimator", DEFAULTS["motion_estimator"])))
    ref_img = nib.Nifti1Image(ref, img.affine)
    native_ref = work / f"{stem}_boldref.nii.gz"
    nib.save(ref_img, str(native_ref))
    ref_mask = ref > 0.1 * np.percentile(ref[ref > 0], 98)
    ijk = np.argwhere(ref_mask).mean(axis=0)
    centre = nib.affines.apply_affine(img.affine, ijk)
    motion = motion_parameters(mats, centre)
    timings["motion_correction_s"] = time.perf_counter() - t0

    t0 = _begin("coregistration")
    coreg = _coregister(ref_img, anat, work)  # T1w point -> boldref point
    timings["coregistration_s"] = time.perf_counter() - t0
    mirror_qc = _mirror_check(ref_img, coreg, anat, bold_path)

    # one interpolation: MNI voxel -> T1w -> boldref -> volume t
    t0 = _begin("resample")
    tpl_mask, mni_aff = _mni_grid()
    roi = ndi.binary_dilation(tpl_mask, iterations=3)
    edge = np.zeros_like(roi)
    edge[1:-1, 1:-1, 1:-1] = True
    roi &= edge  # the displacement field is defined on this same grid: stay inside it
    idx = np.argwhere(roi)
    mni_pts = nib.affines.apply_affine(mni_aff, idx)
    # image resampling: points near the field's edge (outside the brain) are allowed
    t1_pts = load_point_transform(anat.to_mni).map(mni_pts, edge_margin=False)
    ref_pts = nib.affines.apply_affine(coreg, t1_pts)
    inv_bold = np.linalg.inv(img.affine)
    order = int(settings["interpolation_order"])
    out = np.zeros((idx.shape[0], n_t), dtype=np.float32)
    inside = np.ones(idx.shape[0], dtype=bool)
    shape = np.asarray(img.shape[:3])
    def one(t: int) -> tuple[np.ndarray, np.ndarray]:
        m = inv_bold @ mats[t]
        vox = nib.affines.apply_affine(m, ref_pts)
        ok = np.all((vox >= -0.5) & (vox <= shape - 0.5), axis=1)
        return ok, ndi.map_coordinates(data[..., t], vox.T, order=order, mode="nearest",
                                       prefilter=order > 1)

    # scipy's interpolation releases the GIL: threads resample volumes side by side
    with ThreadPoolExecutor(max_workers=max(1, int(threads))) as pool:
        for t, (ok, vals) in enumerate(pool.map(one, range(n_t))):
            inside &= ok
            out[:, t] = vals
    np.clip(out, 0, None, out=out)
    timings["resample_s"] = time.perf_counter() - t0

    # brain mask on the MNI grid: template brain, inside the field of view, with signal
    t0 = _begin("confounds")
    mean_mni = out.mean(axis=1)
    in_tpl = tpl_mask[tuple(idx.T)]
    level = np.percentile(mean_mni[in_tpl & inside], 50) if np.any(in_tpl & inside) else 0.0
    keep = in_tpl & inside & (mean_mni > 0.2 * level)
    if keep.sum() < 1000:
        raise InputError(bold_path, f"only {int(keep.sum())} template-brain voxels received "
                         "BOLD signal after registration; the BOLD-to-T1w or T1w-to-MNI "
                         "registration probably failed.",
                         "Look at the QC figures in sourcedata/builtin/.../figures, check the "
                         "T1w and the BOLD (field of view, orientation), or use fMRIPrep.")
    mask3d = np.zeros(tpl_mask.shape, dtype=np.uint8)
    mask3d[tuple(idx[keep].T)] = 1
    # Fortran order, as NIfTI stores it: nibabel then writes the series without transposing it
    # (a C-ordered 4D series took ~20 s of the write stage in the transpose alone)
    vol = np.zeros((*tpl_mask.shape, n_t), dtype=np.float32, order="F")
    vol_rows = vol.reshape(-1, n_t, order="F")  # a view: row = voxel, column = volume
    rows = np.ravel_multi_index(tuple(idx.T), tpl_mask.shape, order="F")
    for t in range(n_t):
        vol_rows[rows, t] = out[:, t]

    # tissue masks for the confounds, in MNI through the same map
    def tissue(name: str) -> np.ndarray:
        p = nib.load(str(anat.probseg[name]))
        vox = nib.affines.apply_affine(np.linalg.inv(p.affine), t1_pts[keep])
        return ndi.map_coordinates(np.asarray(p.dataobj, dtype=np.float32), vox.T, order=1)

    wm_p, csf_p = tissue("WM"), tissue("CSF")
    wm = _top(wm_p, 0.95, 20)
    csf = _top(csf_p, 0.9, 20) & ~wm
    series = out[keep].T.astype(np.float64)
    df, meta = compute_confounds(series, wm, csf, motion, tr, n_dummy)
    timings["confounds_s"] = time.perf_counter() - t0

    t0 = _begin("write")
    func_dir.mkdir(parents=True, exist_ok=True)
    pre = f"{stem}_space-{SPACE}_res-2"
    # the same per-voxel float32 mean as over the series' last axis, taken on the contiguous rows
    mean_ref = np.zeros(tpl_mask.shape, dtype=np.float32)
    mean_ref[tuple(idx[keep].T)] = out[keep, n_dummy:].mean(axis=1)
    files = {
        "boldref_native": str(native_ref),
        "bold": str(_save(nib.Nifti1Image(vol, mni_aff),
                          func_dir / f"{pre}_desc-preproc_bold.nii.gz", code=4, tr=tr)),
        "mask": str(_save(nib.Nifti1Image(mask3d, mni_aff),
                          func_dir / f"{pre}_desc-brain_mask.nii.gz", dtype=np.uint8, code=4)),
        "boldref": str(_save(nib.Nifti1Image(mean_ref, mni_aff),
                             func_dir / f"{pre}_boldref.nii.gz", code=4)),
    }
    write_json(func_dir / f"{pre}_desc-preproc_bold.json", {
        "RepetitionTime": tr, "SkullStripped": False, "TaskName": _entity(stem, "task"),
        "Sources": [str(bold_path.name)], "NumberOfVolumesNonSteadyState": n_dummy,
        "Description": f"tmstarget {LIMITS}"})
    write_confounds(df, meta, func_dir / f"{stem}_desc-confounds_timeseries.tsv")
    files["confounds"] = str(func_dir / f"{stem}_desc-confounds_timeseries.tsv")
    from .itk import write_itk_txt_affine

    coreg_file = func_dir / f"{stem}_from-boldref_to-T1w_mode-image_desc-coreg_xfm.txt"
    write_itk_txt_affine(coreg_file, coreg)
    files["coreg"] = str(coreg_file)
    mot = pd.DataFrame(motion, columns=list(MOTION_COLUMNS))
    mot["framewise_displacement"] = df["framewise_displacement"]
    hmc = func_dir / f"{stem}_desc-hmc_motion.tsv"
    hmc.write_text(mot.to_csv(sep="\t", index=False, na_rep="n/a", float_format="%.8g",
                              lineterminator="\n"))
    files["motion"] = str(hmc)
    timings["write_s"] = time.perf_counter() - t0
    fd = df["framewise_displacement"].to_numpy()
    qc = {
        "n_volumes": n_t, "n_non_steady_state": n_dummy, "tr": tr,
        "mean_fd_mm": round(float(np.nanmean(fd[n_dummy + 1:])), 4),
        "max_fd_mm": round(float(np.nanmax(fd[n_dummy + 1:])), 4),
        "n_fd_above_0.5mm": int(np.sum(np.nan_to_num(fd[n_dummy:]) > 0.5)),
        "max_translation_mm": round(float(np.abs(motion[n_dummy:, :3]).max()), 4),
        "max_rotation_deg": round(float(np.rad2deg(np.abs(motion[n_dummy:, 3:]).max())), 4),
        "brain_mask_voxels": int(keep.sum()),
        "template_brain_coverage": round(float(keep.sum() / max(tpl_mask.sum(), 1)), 4),
        "n_wm_voxels": int(wm.sum()), "n_csf_voxels": int(csf.sum()),
        "motion_centre_mm": [round(float(v), 3) for v in centre],
        "motion_centre_space": "BOLD image world (scanner), RAS+ mm",
        "input_storage": stored, "t1w_input_storage": anat.input_storage,
        "conformed_to": "RAS (axes permuted/flipped, no resampling; world unchanged)",
        "boldref_mirror_check": mirror_qc,
    }
    return RunResult(n_dummy, motion, timings, files, qc)


def _top(prob: np.ndarray, thr: float, minimum: int) -> np.ndarray:
    """``prob >= thr``, or the ``minimum`` most probable voxels when fewer pass."""
    sel = prob >= thr
    if sel.sum() < minimum:
        sel = np.zeros(prob.shape, dtype=bool)
        sel[np.argsort(-prob, kind="stable")[:minimum]] = True
    return sel


def _entity(stem: str, key: str) -> str | None:
    for part in stem.split("_"):
        if part.startswith(f"{key}-"):
            return part[len(key) + 1:]
    return None


# --------------------------------------------------------------------------- QC figures
def qc_figures(anat: AnatResult, run_files: Mapping[str, Mapping[str, str]],
               motions: Mapping[str, np.ndarray], fig_dir: Path, label: str) -> dict[str, str]:
    """PNG QC figures: T1w on template, brain mask on T1w, BOLD reference on T1w, motion.

    Returns
    -------
    dict
        Figure kind/run -> path.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from nilearn import plotting

    ants = _ants()
    fig_dir.mkdir(parents=True, exist_ok=True)
    out: dict[str, str] = {}
    tpl = ants.image_read(str(_data_file("tpl-MNI152NLin2009cAsym_res-01_desc-brain_T1w.nii.gz")))
    tpl = ants.resample_image(tpl, (1.5, 1.5, 1.5), use_voxels=False, interp_type=0)
    t1 = ants.image_read(str(anat.t1w))
    warped = ants.apply_transforms(tpl, t1, [str(anat.to_mni)])
    path = fig_dir / f"sub-{label}_space-{SPACE}_desc-normalization_T1w.png"
    disp = plotting.plot_anat(_from_ants(warped), display_mode="ortho", cut_coords=(-38, 20, 30),
                              title="T1w in MNI152NLin2009cAsym; red: template edges",
                              draw_cross=False, annotate=True)
    disp.add_edges(_from_ants(tpl), color="r")
    disp.frame_axes.figure.savefig(str(path), dpi=80, metadata={"Software": None})
    disp.close()
    out["normalization"] = str(path)
    t1_nib = _display_copy(nib.load(str(anat.t1w)))
    out["brainmask"] = str(_brain_mask_figure(t1_nib, nib.load(str(anat.brain_mask)),
                                              fig_dir / f"sub-{label}_desc-brain_mask_T1w.png"))
    for stem, files in run_files.items():
        from .itk import load_itk_affine

        m = load_itk_affine(files["coreg"])  # T1w point -> boldref point
        ref = nib.load(files["boldref_native"])
        ijk = np.indices(t1_nib.shape).reshape(3, -1)
        pts = nib.affines.apply_affine(m @ t1_nib.affine, ijk.T)
        vox = nib.affines.apply_affine(np.linalg.inv(ref.affine), pts)
        on_t1 = ndi.map_coordinates(np.asarray(ref.dataobj, dtype=np.float32), vox.T, order=1,
                                    cval=0.0).reshape(t1_nib.shape)
        path = fig_dir / f"{stem}_desc-coreg_bold.png"
        disp = plotting.plot_anat(nib.Nifti1Image(on_t1, t1_nib.affine), display_mode="ortho",
                                  title="BOLD reference on T1w; red: T1w edges", draw_cross=False)
        disp.add_edges(t1_nib, color="r")
        disp.frame_axes.figure.savefig(str(path), dpi=80, metadata={"Software": None})
        disp.close()
        out[f"coreg:{stem}"] = str(path)
        mot = motions[stem]
        fig, axes = plt.subplots(3, 1, figsize=(8, 5.5), sharex=True)
        for j, name in enumerate(MOTION_COLUMNS[:3]):
            axes[0].plot(mot[:, j], label=name)
        for j, name in enumerate(MOTION_COLUMNS[3:]):
            axes[1].plot(np.rad2deg(mot[:, 3 + j]), label=name)
        fd = pd.read_csv(files["motion"], sep="\t")["framewise_displacement"].to_numpy()
        axes[2].plot(fd, color="k", label="FD")
        axes[2].axhline(0.5, color="r", ls="--", lw=0.8, label="0.5 mm")
        axes[0].set_ylabel("mm")
        axes[1].set_ylabel("degrees")
        axes[2].set_ylabel("FD (mm)")
        axes[2].set_xlabel("volume")
        for ax in axes:
            ax.legend(loc="upper right", fontsize=7, ncol=4)
        fig.suptitle(f"{stem}: head motion (built-in, reference = median of early volumes)")
        fig.tight_layout()
        path = fig_dir / f"{stem}_desc-motion_bold.png"
        fig.savefig(path, dpi=80, metadata={"Software": None})
        plt.close(fig)
        out[f"motion:{stem}"] = str(path)
    return out


def _display_copy(img: nib.Nifti1Image, voxel_mm: float = 1.0,
                  interpolation: str = "continuous") -> nib.Nifti1Image:
    """A copy no finer than ``voxel_mm`` (RAS grid), for QC figures only.

    Plotting a 0.7 mm T1w (40 M voxels) took minutes per figure; a 1 mm copy looks the same
    at the figures' 80 dpi. An oblique image is resampled too, once: nilearn would otherwise
    resample it onto a RAS grid for every panel (~2.5 s each, 25 s of QC figures per run).
    """
    from nilearn.image import resample_img

    rot = img.affine[:3, :3]
    zooms = np.sqrt((rot ** 2).sum(axis=0))
    off_diagonal = np.abs(rot - np.diag(np.diag(rot))).max()
    if zooms.min() >= 0.95 * voxel_mm and off_diagonal < 1e-3 and np.all(np.diag(rot) > 0):
        return img
    return resample_img(img, target_affine=np.diag([voxel_mm] * 3), interpolation=interpolation,
                        force_resample=True, copy_header=True)


def _brain_mask_figure(t1: nib.Nifti1Image, mask: nib.Nifti1Image, path: Path) -> Path:
    """Brain-mask outline (red) on the T1w: 5 sagittal, 5 coronal and 5 axial slices.

    Slices are placed across the mask's extent in world (RAS+) mm, so any storage order of
    the T1w gives the same picture.
    """
    import matplotlib.pyplot as plt
    from nilearn import plotting

    t1 = _display_copy(t1)
    mask = _display_copy(nib.Nifti1Image((np.asarray(mask.dataobj) > 0).astype(np.uint8),
                                         mask.affine), interpolation="nearest")
    m = np.asarray(mask.dataobj) > 0
    ijk = np.argwhere(m)
    fig = plt.figure(figsize=(11, 7.2))
    if ijk.size == 0:
        fig.text(0.5, 0.5, "EMPTY BRAIN MASK", ha="center", color="r", fontsize=20)
    else:
        xyz = nib.affines.apply_affine(mask.affine, ijk[:: max(1, len(ijk) // 20000)])
        lo, hi = np.percentile(xyz, 8, axis=0), np.percentile(xyz, 92, axis=0)
        for row, (mode, axis) in enumerate((("x", 0), ("y", 1), ("z", 2))):
            ax = fig.add_axes((0.0, 0.66 - 0.33 * row, 1.0, 0.31))
            cuts = np.linspace(lo[axis], hi[axis], 5).round(0)
            disp = plotting.plot_anat(t1, display_mode=mode, cut_coords=list(cuts), axes=ax,
                                      figure=fig, draw_cross=False, annotate=True,
                                      title="brain mask on T1w (red outline)" if row == 0
                                      else None, dim=-0.2)
            disp.add_contours(nib.Nifti1Image(m.astype(np.float32), mask.affine), levels=[0.5],
                              colors="r", linewidths=0.8)
    fig.savefig(str(path), dpi=80, metadata={"Software": None})
    plt.close(fig)
    return path


# --------------------------------------------------------------------------- participant
def _runs(bids_dir: Path, label: str, task: str) -> list[tuple[Path, str, Path]]:
    """(BOLD path, stem, output func dir relative to the subject folder) of each task run."""
    sub = bids_dir / f"sub-{label}"
    out = []
    for func in sorted([sub / "func", *sorted(p / "func" for p in sub.glob("ses-*"))]):
        for bold in sorted(func.glob(f"sub-{label}*_task-{task}_*bold.nii*")):
            stem = bold.name.split("_bold.nii")[0]
            rel = func.relative_to(sub)
            out.append((bold, stem, rel))
    return out


def _t1w(bids_dir: Path, label: str) -> Path:
    sub = bids_dir / f"sub-{label}"
    cands = sorted(sub.glob("anat/*_T1w.nii*")) + sorted(sub.glob("ses-*/anat/*_T1w.nii*"))
    if not cands:
        raise InputError(sub, "no T1w image (anat/*_T1w.nii.gz).",
                         "Add the participant's T1w image, or exclude the participant.")
    return cands[0]


def settings_from_config(cfg: Mapping[str, Any] | None) -> dict[str, Any]:
    """Built-in settings with defaults filled in and checked."""
    out = dict(DEFAULTS)
    out.update({k: v for k, v in dict(cfg or {}).items() if v is not None or k == "dummy_scans"})
    if float(out["motion_resolution_mm"]) <= 0 or float(out["registration_resolution_mm"]) <= 0:
        raise ConfigError(None, "preprocessing.builtin: resolutions must be positive (mm).",
                          "Fix motion_resolution_mm / registration_resolution_mm.")
    _check_estimator(out["motion_estimator"])
    if int(out["interpolation_order"]) not in (1, 3):
        raise ConfigError(None, "preprocessing.builtin.interpolation_order must be 1 or 3.",
                          "Use 3 (cubic B-spline, default) or 1 (linear).")
    return out


def write_dataset_description(root: Path, bids_dir: Path | None = None) -> None:
    """``dataset_description.json`` of the built-in derivatives tree.

    The raw dataset's ``Name`` is repeated, so an input that says it is simulated stays
    labelled as simulated in the reports.
    """
    src_name = ""
    if bids_dir is not None and (bids_dir / "dataset_description.json").is_file():
        try:
            src = json.loads((bids_dir / "dataset_description.json").read_text(encoding="utf-8"))
            src_name = str(src.get("Name", "")) if isinstance(src, dict) else ""
        except ValueError:
            src_name = ""
    write_json(root / "dataset_description.json", {
        "Name": "tmstarget built-in preprocessing" + (f" of: {src_name}" if src_name else ""),
        "BIDSVersion": "1.9.0", "DatasetType": "derivative",
        "SourceDatasets": [{"URL": f"file://{bids_dir}"}] if bids_dir is not None else [],
        "GeneratedBy": [{"Name": GENERATOR_NAME, "Version": __version__,
                         "Description": LIMITS}]})


def preprocess_participant(bids_dir: str | os.PathLike[str], out_root: str | os.PathLike[str],
                           participant: str, done: str | os.PathLike[str],
                           cfg: Mapping[str, Any] | None = None, task: str = "rest",
                           threads: int = 1) -> dict[str, Any]:
    """Run the built-in preprocessing for one participant (all sessions and runs).

    Parameters
    ----------
    bids_dir : path-like
        Raw BIDS dataset (read only).
    out_root : path-like
        ``OUTPUT_DIR/sourcedata/builtin``.
    participant : str
        Label without ``sub-``.
    done : path-like
        Marker written last (JSON with timings and QC).
    cfg : mapping, optional
        ``preprocessing.builtin`` settings.
    task : str
    threads : int
        Threads the rule was given; ITK/ANTs use them only when ``deterministic`` is false
        (:func:`itk_threads`).

    Returns
    -------
    dict
        The content of ``done``.
    """
    settings = settings_from_config(cfg)
    n_threads = itk_threads(settings, threads)
    # read by ITK when ANTs first runs in this process (the rule's script is a new process)
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(n_threads)
    bids_dir, out_root = Path(bids_dir), Path(out_root)
    write_dataset_description(out_root, bids_dir)
    sub_out = out_root / f"sub-{participant}"
    _PROGRESS.update(who=f"sub-{participant}", start=time.perf_counter())
    runs = _runs(bids_dir, participant, task)
    if not runs:
        raise InputError(bids_dir / f"sub-{participant}", f"no task-{task} BOLD run.",
                         "Check the task label (config `task`).")
    t1w = _t1w(bids_dir, participant)
    report: dict[str, Any] = {"participant": participant, "t1w": str(t1w), "runs": {},
                              "settings": settings, "itk_threads": n_threads, "limits": LIMITS,
                              "generated_by": f"{GENERATOR_NAME} {__version__}"}
    saved_tempdir = tempfile.tempdir
    with tempfile.TemporaryDirectory(prefix=f"tmstarget-builtin-{participant}-") as tmp:
        work = Path(tmp)
        tempfile.tempdir = tmp  # ANTsPy's own temporary files (Atropos, ...) go here too
        try:
            _participant_steps(bids_dir, out_root, participant, task, threads, settings, runs,
                               t1w, work, sub_out, report)
        finally:
            tempfile.tempdir = saved_tempdir
    write_json(Path(done), report)
    return report


def _participant_steps(bids_dir: Path, out_root: Path, participant: str, task: str,
                       threads: int, settings: Mapping[str, Any],
                       runs: list[tuple[Path, str, Path]], t1w: Path, work: Path,
                       sub_out: Path, report: dict[str, Any]) -> None:
    """The body of :func:`preprocess_participant` (fills ``report``)."""
    anat = anatomical_workflow(t1w, sub_out / "anat", participant, work, settings, threads)
    report["anat_timings_s"] = {k: round(v, 2) for k, v in anat.timings.items()}
    run_files, motions = {}, {}
    for bold, stem, rel in runs:
        side = bold.with_name(bold.name.split(".nii")[0] + ".json")
        tr = None
        if side.is_file():
            try:
                tr = json.loads(side.read_text(encoding="utf-8")).get("RepetitionTime")
            except ValueError as exc:
                raise InputError(side, f"not valid JSON ({exc}).", "Fix the sidecar.") from None
        res = functional_workflow(bold, anat, sub_out / rel, stem, work, settings, tr,
                                  threads=threads)
        run_files[stem] = res.files
        motions[stem] = res.motion
        qc_path = sub_out / rel / f"{stem}_desc-builtin_qc.json"
        write_json(qc_path, {**res.qc, "timings_s": {k: round(v, 2)
                                                     for k, v in res.timings.items()},
                             "limits": LIMITS})
        report["runs"][stem] = {"qc": res.qc, "timings_s": {k: round(v, 2) for k, v in
                                                            res.timings.items()}}
    t0 = _begin("figures")
    report["figures"] = {k: os.path.relpath(v, out_root) for k, v in
                         qc_figures(anat, run_files, motions, sub_out / "figures",
                                    participant).items()}
    report["figures_s"] = round(time.perf_counter() - t0, 2)

