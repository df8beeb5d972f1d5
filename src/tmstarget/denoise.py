"""Denoising of one fMRIPrep run: named confound strategies, scrubbing, band-pass, smoothing.

The cleaning follows nilearn exactly (``load_confounds`` for the confounds and the censoring
mask, ``signal.clean`` for detrending, confound regression, censoring and band-pass filtering,
``zscore_sample`` standardisation, ``smooth_img`` for smoothing) but never builds the full
voxel x time matrix in float64 and never loads the whole 4D image at once:

* temporal cleaning is one linear operator ``L`` (kept volumes x volumes) shared by every voxel;
  it is obtained once by cleaning the identity matrix with the very call the reference uses;
* the 4D file is streamed in chunks of volumes; each chunk is smoothed in space (smoothing acts
  on each volume independently), masked, and accumulated as ``Y += L[:, chunk] @ X_chunk``;
* ``Y`` (float32, kept x brain voxels) is then z-scored per voxel.

``tests/test_denoise.py`` proves the result equals ``nilearn.maskers.NiftiMasker`` with the same
settings to float32 precision for every named strategy, with and without censoring.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import nibabel as nb
import numpy as np
import pandas as pd

from .errors import ConfigError, InputError
from .io import atomic_write

#: Volumes read per chunk when streaming a 4D file.
CHUNK_VOLUMES = 50
#: Above this fraction of brain-mask voxels with a constant signal the run is refused.
MAX_CONSTANT_FRACTION = 0.10


@dataclass(frozen=True)
class Strategy:
    """A named denoising strategy (what is regressed out and how the data are filtered).

    Attributes
    ----------
    name : str
        Name recorded in every output (``fox2012``, ``36p``, ``acompcor``).
    confounds : tuple of str
        ``strategy`` argument of :func:`nilearn.interfaces.fmriprep.load_confounds`.
    motion, wm_csf, global_signal : str
        Expansion of each confound family (``basic``, ``derivatives``, ``power2``, ``full``).
    compcor : str
        CompCor flavour (used when ``"compcor"`` is in ``confounds``).
    n_compcor : int or "all"
        Number of CompCor components.
    high_pass, low_pass : float or None
        Butterworth band-pass edges in Hz.
    smoothing_fwhm : float or None
        Isotropic Gaussian smoothing in mm (None or 0 = none).
    detrend : bool
        Remove a linear trend.
    reference : str
        Where the strategy comes from.
    """

    name: str
    confounds: tuple[str, ...]
    motion: str = "basic"
    wm_csf: str = "basic"
    global_signal: str = "basic"
    compcor: str = "anat_combined"
    n_compcor: int | str = 5
    high_pass: float | None = 0.01
    low_pass: float | None = 0.08
    smoothing_fwhm: float | None = 6.0
    detrend: bool = True
    reference: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description (recorded in every sidecar)."""
        d = asdict(self)
        d["confounds"] = list(self.confounds)
        return d


STRATEGIES: dict[str, Strategy] = {
    "fox2012": Strategy(
        "fox2012", ("motion", "wm_csf", "global_signal", "scrub", "non_steady_state"),
        motion="basic", wm_csf="basic", global_signal="basic",
        high_pass=0.009, low_pass=0.08, smoothing_fwhm=6.0,
        reference="Fox et al. 2012, Biol Psychiatry 72:595: 6 motion parameters, white matter, "
                  "CSF and global signal regressed; band-pass 0.009-0.08 Hz; 6 mm FWHM."),
    "36p": Strategy(
        "36p", ("motion", "wm_csf", "global_signal", "scrub", "non_steady_state"),
        motion="full", wm_csf="full", global_signal="full",
        high_pass=0.01, low_pass=0.08, smoothing_fwhm=6.0,
        reference="Satterthwaite et al. 2013 / Ciric et al. 2017: 36 parameters (motion, WM, "
                  "CSF, global signal with derivatives and squares); band-pass 0.01-0.08 Hz."),
    "acompcor": Strategy(
        "acompcor", ("motion", "high_pass", "compcor", "scrub", "non_steady_state"),
        motion="full", compcor="anat_combined", n_compcor=5,
        high_pass=0.01, low_pass=0.08, smoothing_fwhm=6.0,
        reference="Behzadi et al. 2007 / Muschelli et al. 2014: 24 motion parameters + 5 "
                  "anatomical CompCor components (WM+CSF), no global signal; band-pass "
                  "0.01-0.08 Hz. fMRIPrep's cosine regressors are included because CompCor was "
                  "computed on high-pass filtered data."),
}


def resolve_strategy(name: str, overrides: Mapping[str, Any] | None = None) -> Strategy:
    """Return a named strategy with optional overrides (``None`` values are ignored).

    Parameters
    ----------
    name : str
        One of :data:`STRATEGIES`.
    overrides : mapping, optional
        ``smoothing_fwhm``, ``high_pass``, ``low_pass``.

    Raises
    ------
    ConfigError
        Unknown name or impossible band.
    """
    if name not in STRATEGIES:
        raise ConfigError(None, f"denoise.strategy '{name}' is not known; choose one of "
                          f"{', '.join(STRATEGIES)}.")
    s = STRATEGIES[name]
    changes = {k: (float(v) if v is not None else None)
               for k, v in (overrides or {}).items() if v is not None}
    unknown = set(changes) - {"smoothing_fwhm", "high_pass", "low_pass"}
    if unknown:
        raise ConfigError(None, f"cannot override {sorted(unknown)} of a denoising strategy.")
    s = replace(s, **changes)
    if s.high_pass is not None and s.low_pass is not None and s.high_pass >= s.low_pass:
        raise ConfigError(None, f"denoise.high_pass ({s.high_pass} Hz) must be below denoise.low_pass "
                          f"({s.low_pass} Hz).")
    return s


@dataclass
class DenoisedRun:
    """One run after denoising.

    Attributes
    ----------
    data : numpy.ndarray
        float32 (kept volumes, voxels), each voxel z-scored (``zscore_sample``).
    voxels : numpy.ndarray
        int32 (voxels, 3) voxel indices, in ``numpy.nonzero`` (C) order.
    affine : numpy.ndarray
        4x4 voxel-to-MNI (RAS+ mm) affine of the BOLD grid.
    shape : tuple of int
        3D grid shape.
    kept : numpy.ndarray
        Indices of the retained volumes in the original run.
    tr : float
        Repetition time (s).
    qc : dict
        Quality numbers (volumes, censoring, FD, strategy, ...).
    """

    data: np.ndarray
    voxels: np.ndarray
    affine: np.ndarray
    shape: tuple[int, int, int]
    kept: np.ndarray
    tr: float
    qc: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- validation
def _load_image(path: Path, what: str) -> nb.Nifti1Image:
    if not path.is_file():
        raise InputError(path, f"the {what} does not exist.", "Check the fMRIPrep output.")
    try:
        img = nb.load(path, keep_file_open=True) if str(path).endswith(".gz") else nb.load(path)
    except Exception as exc:  # nibabel raises many types for broken files
        raise InputError(path, f"the {what} cannot be read as NIfTI ({exc}).",
                         "The file is corrupt or truncated: copy it again or rerun fMRIPrep "
                         "for this participant.") from exc
    return img


def _check_affine(img: nb.Nifti1Image, path: Path, what: str) -> np.ndarray:
    hdr = img.header
    aff = np.asarray(img.affine, dtype=float)
    if not np.all(np.isfinite(aff)) or abs(np.linalg.det(aff[:3, :3])) < 1e-6:
        raise InputError(path, f"the {what} has an invalid voxel-to-world affine.",
                         "Check the NIfTI header (qform/sform).")
    q, qc = hdr.get_qform(coded=True)
    s, sc = hdr.get_sform(coded=True)
    if q is not None and s is not None and qc > 0 and sc > 0:
        if not np.allclose(q, s, atol=1e-3):
            err = float(np.abs(q - s).max())
            raise InputError(path, f"the {what}'s qform and sform disagree (by up to "
                             f"{err:.3g} mm); which one a program uses would change where "
                             "the target is.",
                             "Fix the header (e.g. nibabel: img.set_qform(img.get_sform())) "
                             "after checking which is right, or rerun fMRIPrep.")
    return aff


def _repetition_time(img: nb.Nifti1Image, bold: Path, bold_json: Path | None) -> float:
    tr_json = None
    if bold_json is not None and Path(bold_json).is_file():
        try:
            meta = json.loads(Path(bold_json).read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InputError(bold_json, f"the BOLD sidecar is not valid JSON ({exc}).",
                             "Repair or regenerate the JSON sidecar.") from exc
        tr_json = meta.get("RepetitionTime")
    if tr_json is None:
        raise InputError(bold_json or bold, "RepetitionTime is missing from the BOLD JSON "
                         "sidecar.", "Add \"RepetitionTime\" (seconds) to the sidecar; "
                         "fMRIPrep writes it.")
    try:
        tr = float(tr_json)
    except (TypeError, ValueError):
        raise InputError(bold_json, f"RepetitionTime {tr_json!r} is not a number.",
                         "Write it in seconds, e.g. 2.0.") from None
    if not (0.05 < tr < 20):
        raise InputError(bold_json, f"RepetitionTime {tr} s is implausible.",
                         "RepetitionTime must be in seconds (e.g. 2.0, not 2000).")
    zooms = img.header.get_zooms()
    if len(zooms) > 3 and zooms[3] > 0:
        unit = img.header.get_xyzt_units()[1]
        tr_hdr = float(zooms[3]) * {"msec": 1e-3, "usec": 1e-6}.get(unit, 1.0)
        if abs(tr_hdr - tr) > 0.01 * tr + 1e-3:
            raise InputError(bold, f"the repetition time in the NIfTI header ({tr_hdr:g} s) "
                             f"disagrees with RepetitionTime in {Path(bold_json).name} "
                             f"({tr:g} s).", "Find out which is right and fix the other; the "
                             "band-pass filter depends on it.")
    return tr


def _load_confounds(bold: Path, confounds: Path, n_vols: int, strategy: Strategy,
                    fd_threshold: float, std_dvars_threshold: float | None,
                    min_segment: int) -> tuple[pd.DataFrame, np.ndarray | None, pd.DataFrame]:
    if not Path(confounds).is_file():
        raise InputError(confounds, "the confounds file does not exist.",
                         "Check the fMRIPrep output for this run.")
    try:
        raw = pd.read_csv(confounds, sep="\t")
    except Exception as exc:
        raise InputError(confounds, f"the confounds TSV cannot be read ({exc}).",
                         "Regenerate it with fMRIPrep.") from exc
    if len(raw) != n_vols:
        raise InputError(confounds, f"the confounds table has {len(raw)} rows but the BOLD "
                         f"run {Path(bold).name} has {n_vols} volumes.",
                         "The confounds file belongs to another run or was truncated: use the "
                         "one fMRIPrep wrote beside this BOLD file.")
    bad = [c for c in raw.columns if not pd.api.types.is_numeric_dtype(raw[c])]
    if bad:
        raise InputError(confounds, f"non-numeric values in column(s) {', '.join(bad[:5])}.",
                         "Only numbers and 'n/a' are allowed in a confounds TSV.")
    from nilearn.interfaces.fmriprep import load_confounds

    kwargs: dict[str, Any] = {
        "strategy": strategy.confounds, "motion": strategy.motion, "wm_csf": strategy.wm_csf,
        "global_signal": strategy.global_signal, "scrub": int(min_segment),
        "fd_threshold": float(fd_threshold),
        "std_dvars_threshold": float(std_dvars_threshold) if std_dvars_threshold else math.inf,
        "demean": True,
    }
    if "compcor" in strategy.confounds:
        kwargs.update(compcor=strategy.compcor, n_compcor=strategy.n_compcor)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            conf, sample_mask = load_confounds(str(bold), **kwargs)
    except Exception as exc:
        raise InputError(confounds, f"the confounds needed by strategy '{strategy.name}' could "
                         f"not be loaded: {exc}",
                         "Check that the file is an fMRIPrep confounds table with its JSON "
                         "sidecar, or choose another denoise.strategy.") from exc
    if sample_mask is not None and len(sample_mask) == 0:
        raise InputError(bold, f"every volume of this run is censored (framewise displacement "
                         f"above {fd_threshold} mm or non-steady-state).",
                         "The run has too much motion to be used: exclude it, or, knowingly, "
                         "raise denoise.fd_threshold.")
    if conf is None or conf.shape[1] == 0:
        raise InputError(confounds, f"no confound columns were found for strategy "
                         f"'{strategy.name}'.", "Choose a strategy the file supports.")
    if not np.all(np.isfinite(conf.to_numpy(dtype=float))):
        cols = [c for c in conf.columns if not np.all(np.isfinite(conf[c]))]
        raise InputError(confounds, f"missing or infinite values in {', '.join(cols[:5])}.",
                         "Repair the confounds table (only the first row of derivative "
                         "columns may be 'n/a').")
    return conf, (None if sample_mask is None else np.asarray(sample_mask, dtype=int)), raw


def cleaning_operator(n_volumes: int, confounds: np.ndarray | None,
                      sample_mask: np.ndarray | None, tr: float,
                      strategy: Strategy) -> np.ndarray:
    """The temporal cleaning operator ``L`` (kept volumes x volumes).

    ``L @ x`` equals ``nilearn.signal.clean(x, ..., standardize=False)`` for any time series
    ``x`` of the run, because that cleaning is linear in ``x``; ``L`` is obtained by cleaning the
    identity matrix with the same call.
    """
    from nilearn import signal

    eye = np.eye(n_volumes, dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        op = signal.clean(eye, detrend=strategy.detrend, standardize=False,
                          confounds=confounds, standardize_confounds=True,
                          sample_mask=sample_mask, filter="butterworth"
                          if (strategy.low_pass or strategy.high_pass) else False,
                          low_pass=strategy.low_pass, high_pass=strategy.high_pass, t_r=tr)
    return np.ascontiguousarray(op, dtype=np.float64)


def denoise_run(bold: str | Path, mask: str | Path, confounds: str | Path,
                bold_json: str | Path | None, strategy: Strategy, fd_threshold: float = 0.5,
                std_dvars_threshold: float | None = None, min_segment: int = 5,
                chunk_volumes: int = CHUNK_VOLUMES) -> DenoisedRun:
    """Denoise one preprocessed BOLD run inside its brain mask.

    Parameters
    ----------
    bold, mask, confounds, bold_json : path
        fMRIPrep's ``desc-preproc_bold``, ``desc-brain_mask``, ``desc-confounds_timeseries.tsv``
        (its ``.json`` beside it) and the BOLD JSON sidecar.
    strategy : Strategy
        See :data:`STRATEGIES` and :func:`resolve_strategy`.
    fd_threshold : float
        Framewise displacement (mm) above which a volume is censored.
    std_dvars_threshold : float or None
        Standardised DVARS above which a volume is censored (None: not used).
    min_segment : int
        Runs of kept volumes shorter than this are censored too.
    chunk_volumes : int
        Volumes read at a time (memory vs. speed).

    Returns
    -------
    DenoisedRun

    Raises
    ------
    InputError
        Any problem with the inputs, naming the file.
    """
    bold, mask, confounds = Path(bold), Path(mask), Path(confounds)
    img = _load_image(bold, "preprocessed BOLD image")
    if img.ndim != 4:
        raise InputError(bold, f"this image is {img.ndim}D ({img.shape}); a BOLD run must be 4D "
                         "(x, y, z, time).", "Give the 4D preprocessed BOLD series.")
    n_vols = int(img.shape[3])
    if n_vols < 10:
        raise InputError(bold, f"the run has only {n_vols} volumes.", "Use a full resting run.")
    aff = _check_affine(img, bold, "BOLD image")
    shape = tuple(int(s) for s in img.shape[:3])
    mimg = _load_image(mask, "brain mask")
    maff = _check_affine(mimg, mask, "brain mask")
    if tuple(mimg.shape[:3]) != shape or not np.allclose(maff, aff, atol=1e-3):
        raise InputError(mask, f"the brain mask's grid {tuple(mimg.shape)} does not match the "
                         f"BOLD grid {shape} of {bold.name}.",
                         "Use the brain mask fMRIPrep wrote for this run (same space and res).")
    try:
        bmask = np.asarray(mimg.dataobj).reshape(shape) > 0
    except Exception as exc:
        raise InputError(mask, f"the brain mask cannot be read ({exc}).",
                         "Copy it again or rerun fMRIPrep.") from exc
    if not bmask.any():
        raise InputError(mask, "the brain mask is empty.", "Use fMRIPrep's brain mask.")
    tr = _repetition_time(img, bold, Path(bold_json) if bold_json else None)
    conf, sample_mask, raw = _load_confounds(bold, confounds, n_vols, strategy, fd_threshold,
                                             std_dvars_threshold, min_segment)
    nss = [c for c in raw.columns if c.startswith("non_steady_state_outlier")]
    n_nss = int((raw[nss].to_numpy() > 0).any(axis=1).sum()) if nss else 0
    kept = np.arange(n_vols) if sample_mask is None else np.sort(sample_mask)
    if len(kept) < 3:
        raise InputError(bold, f"only {len(kept)} of {n_vols} volumes survive scrubbing.",
                         "This run has too much motion to be used.")
    op = cleaning_operator(n_vols, conf.to_numpy(dtype=float), sample_mask, tr, strategy)
    op32 = op.astype(np.float32)

    voxels = np.argwhere(bmask).astype(np.int32)  # C order, as np.nonzero
    idx = tuple(voxels.T)
    out = np.zeros((op.shape[0], len(voxels)), dtype=np.float32)
    fwhm = strategy.smoothing_fwhm
    n_bad = 0
    offset: np.ndarray | None = None
    for a in range(0, n_vols, chunk_volumes):
        b = min(n_vols, a + chunk_volumes)
        try:
            chunk = np.asarray(img.dataobj[..., a:b], dtype=np.float32)
        except Exception as exc:
            raise InputError(bold, f"volumes {a}-{b - 1} cannot be read ({exc}).",
                             "The file is corrupt or truncated: copy it again or rerun "
                             "fMRIPrep.") from exc
        if not chunk.flags.writeable:
            chunk = chunk.copy()
        finite = np.isfinite(chunk)
        if not finite.all():
            n_bad += int((~finite[idx]).any(axis=-1).sum())
            chunk[~finite] = 0.0
        if fwhm:
            from nilearn.image import smooth_img

            chunk = np.asarray(smooth_img(nb.Nifti1Image(chunk, aff), fwhm).dataobj,
                               dtype=np.float32)
        x = chunk[idx].T  # (c, voxels)
        if offset is None:
            # L annihilates constants (detrending removes the mean), so subtracting a per-voxel
            # offset changes nothing but keeps float32 products far from cancellation.
            offset = x.mean(axis=0, dtype=np.float64).astype(np.float32)
        x -= offset
        out += op32[:, a:b] @ x  # (kept, c) @ (c, voxels)
    if n_bad:
        raise InputError(bold, f"{n_bad} voxel(s) inside the brain mask contain NaN or infinite "
                         "values.", "The BOLD file is damaged: rerun fMRIPrep or repair it.")
    # z-score (nilearn's "zscore_sample": ddof=1); drop voxels with no signal variance
    out -= out.mean(axis=0, dtype=np.float64).astype(np.float32)
    sd = out.std(axis=0, ddof=1, dtype=np.float64)
    ref = float(np.median(sd[sd > 0])) if np.any(sd > 0) else 0.0
    good = sd > 1e-5 * ref if ref > 0 else np.zeros(len(sd), bool)
    n_const = int((~good).sum())
    if n_const > MAX_CONSTANT_FRACTION * len(sd):
        raise InputError(bold, f"{n_const} of {len(sd)} voxels inside the brain mask "
                         f"({100 * n_const / len(sd):.0f} %) have a constant signal.",
                         f"The brain mask ({mask.name}) does not fit the data, or the data are "
                         "blank in part of the brain: check both in a viewer.")
    if n_const:
        out = out[:, good]
        voxels = voxels[good]
        sd = sd[good]
    out /= sd.astype(np.float32)

    fd = (raw["framewise_displacement"].fillna(0).to_numpy(dtype=float)
          if "framewise_displacement" in raw else np.zeros(n_vols))
    n_censored = n_vols - len(kept) - n_nss
    qc: dict[str, Any] = {
        "n_volumes": n_vols,
        "n_non_steady_state": n_nss,
        "n_censored": int(max(n_censored, 0)),
        "n_retained": int(len(kept)),
        "retained_seconds": float(len(kept) * tr),
        "fd": [round(float(v), 5) for v in fd],
        "fd_mean": float(np.mean(fd)),
        "fd_max": float(np.max(fd)),
        "censored": sorted(set(range(n_vols)) - set(int(k) for k in kept)),
        "fd_threshold": float(fd_threshold),
        "std_dvars_threshold": std_dvars_threshold,
        "min_segment": int(min_segment),
        "confound_columns": list(conf.columns),
        "n_constant_voxels_dropped": n_const,
        "repetition_time": tr,
        "strategy": strategy.to_dict(),
    }
    return DenoisedRun(out, voxels, aff, shape, kept.astype(np.int32), tr, qc)


def save_denoised(run: DenoisedRun, path: str | Path) -> None:
    """Write a :class:`DenoisedRun` to ``.npz`` atomically (temp file + rename)."""
    with atomic_write(path, "wb") as fh:
        np.savez(fh, data=run.data, voxels=run.voxels, affine=run.affine,
                 shape=np.asarray(run.shape), kept=run.kept, tr=np.asarray(run.tr),
                 qc=np.asarray(json.dumps(run.qc, sort_keys=True)))


def load_denoised(path: str | Path) -> DenoisedRun:
    """Read a file written by :func:`save_denoised`."""
    with np.load(path, allow_pickle=False) as z:
        return DenoisedRun(z["data"], z["voxels"], z["affine"],
                           tuple(int(s) for s in z["shape"]), z["kept"], float(z["tr"]),
                           json.loads(str(z["qc"])))
