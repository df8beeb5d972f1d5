"""fMRIPrep-style confounds: realignment expansions, FD, DVARS, CompCor, cosine basis.

Used by the built-in preprocessing path (:mod:`tmstarget.builtin`) and by the simulator
(:mod:`tmstarget.simulate`) to write ``desc-confounds_timeseries.tsv`` + ``.json`` files with
fMRIPrep's column names, so that the denoising step reads them exactly as fMRIPrep's output
(through nilearn's ``load_confounds``). Formulas follow fMRIPrep/nipype (Power 2012 FD,
Jenkinson 1999 RMS, nipype DVARS and CompCor).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.spatial.transform import Rotation

__all__ = ["compcor", "compute_confounds", "cosine_basis", "dvars", "framewise_displacement",
           "relative_rms", "write_confounds"]


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8", newline="\n")


def _write_json(path: Path, obj: dict) -> None:
    _write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def framewise_displacement(params: np.ndarray, radius: float = 50.0) -> np.ndarray:
    """Power et al. (2012) framewise displacement (first value NaN).

    Parameters
    ----------
    params : numpy.ndarray, shape (T, 6)
        Translations (mm) then rotations (rad).
    radius : float
        Head radius converting rotations to mm.

    Returns
    -------
    numpy.ndarray, shape (T,)
    """
    d = np.abs(np.diff(params, axis=0))
    fd = d[:, :3].sum(axis=1) + radius * d[:, 3:].sum(axis=1)
    return np.concatenate([[np.nan], fd])


def relative_rms(params: np.ndarray, radius: float = 80.0) -> np.ndarray:
    """Relative RMS displacement between consecutive volumes (Jenkinson 1999; first NaN).

    Parameters
    ----------
    params : numpy.ndarray, shape (T, 6)
    radius : float
        Radius of the sphere over which displacement is averaged, mm.

    Returns
    -------
    numpy.ndarray, shape (T,)
    """
    mats = []
    for p in params:
        m = np.eye(4)
        m[:3, :3] = Rotation.from_euler("xyz", p[3:]).as_matrix()
        m[:3, 3] = p[:3]
        mats.append(m)
    out = [np.nan]
    for prev, cur in zip(mats[:-1], mats[1:], strict=True):
        rel = cur @ np.linalg.inv(prev) - np.eye(4)
        a, t = rel[:3, :3], rel[:3, 3]
        out.append(float(np.sqrt(0.2 * radius**2 * np.trace(a.T @ a) + t @ t)))
    return np.asarray(out)


def cosine_basis(n_times: int, tr: float, period_cut: float = 128.0) -> np.ndarray:
    """DCT high-pass regressors (nilearn/nipype ``cosine_drift``, constant excluded).

    Parameters
    ----------
    n_times : int
    tr : float
    period_cut : float
        Cut-off period, s.

    Returns
    -------
    numpy.ndarray, shape (n_times, n_cosines)
    """
    order = int(np.floor(2 * n_times * tr / period_cut))
    t = np.arange(n_times)
    cols = [np.sqrt(2.0 / n_times) * np.cos(np.pi / n_times * (t + 0.5) * k)
            for k in range(1, order)]
    return np.stack(cols, axis=1) if cols else np.zeros((n_times, 0))


def compcor(
    data: np.ndarray, n_nss: int, basis: np.ndarray, threshold: float = 0.5,
    n_min: int = 5, n_max: int = 10,
) -> tuple[np.ndarray, np.ndarray]:
    """CompCor components (nipype/fMRIPrep style) of ``data`` (time x voxels).

    Non-steady-state volumes are excluded (zeros in the output), the remaining series are
    high-pass filtered (``basis`` plus a constant), variance-normalised and decomposed by
    SVD; components are kept up to ``threshold`` cumulative variance, clipped to
    ``[n_min, n_max]``.

    Returns
    -------
    components : numpy.ndarray, shape (T, n)
    singular_values : numpy.ndarray, shape (n_all,)
        All singular values (for the metadata).
    """
    raw = data[n_nss:].astype(np.float64)
    y = _highpass(raw, basis)
    sd = y.std(axis=0)
    # constant voxels (e.g. outside the field of view) are dropped: their residuals are
    # rounding noise, which variance normalisation would blow up to unit variance
    keep = (np.ptp(raw, axis=0) > 0) & (sd > 0)
    y = y[:, keep] / sd[keep]
    u, s = _left_singular(y)
    # deterministic sign: largest-magnitude loading positive
    signs = np.sign(u[np.argmax(np.abs(u), axis=0), np.arange(u.shape[1])])
    u = u * np.where(signs == 0, 1.0, signs)
    var = s**2 / np.sum(s**2)
    n = int(np.searchsorted(np.cumsum(var), threshold) + 1)
    n = int(np.clip(n, n_min, min(n_max, u.shape[1])))
    comps = np.zeros((data.shape[0], n))
    comps[n_nss:] = u[:, :n]
    return comps, s


def _highpass(y: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """``y`` minus its least-squares fit on a constant and ``basis`` (columns of ``y``).

    Projection on an orthonormal basis of the regressors (QR): the same residuals as
    ``y - x @ lstsq(x, y)`` (to rounding) at the cost of two matrix products.
    """
    x = np.column_stack([np.ones(y.shape[0]), basis])
    q, _ = np.linalg.qr(x)
    fit = q @ (q.T @ y)
    return np.subtract(y, fit, out=fit)  # one T x V temporary, not two


def _left_singular(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Left singular vectors and singular values of ``y`` (T x V), largest first.

    With many more voxels than volumes, from the eigen-decomposition of the T x T Gram
    matrix ``y y^T = U S^2 U^T`` (one matrix product instead of an SVD of the T x V matrix:
    ~10x faster for a brain mask); otherwise the SVD. The leading vectors, the ones CompCor
    keeps, agree with the SVD's to ~1e-10.
    """
    t, v = y.shape
    if v <= 2 * t:
        u, s, _ = np.linalg.svd(y, full_matrices=False)
        return u, s
    w, vec = np.linalg.eigh(y @ y.T)
    order = np.argsort(-w, kind="stable")
    return vec[:, order], np.sqrt(np.clip(w[order], 0.0, None))


def _compcor_meta(prefix: str, s: np.ndarray, n: int, method: str, mask: str | None) -> dict:
    var = s**2 / np.sum(s**2)
    cum = np.cumsum(var)
    out = {}
    for i in range(n):
        entry = {"CumulativeVarianceExplained": round(float(cum[i]), 10)}
        if mask is not None:
            entry["Mask"] = mask
        entry.update({"Method": method, "Retained": True,
                      "SingularValue": round(float(s[i]), 10),
                      "VarianceExplained": round(float(var[i]), 10)})
        out[f"{prefix}_comp_cor_{i:02d}"] = entry
    return out


def dvars(data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DVARS and standardised DVARS (nipype ``compute_dvars``; first value NaN).

    Parameters
    ----------
    data : numpy.ndarray, shape (T, V)
        In-mask time series.

    Returns
    -------
    dvars, std_dvars : numpy.ndarray, shape (T,)
    """
    y = data.astype(np.float64)
    y = y / np.median(y) * 1000.0
    y = y - y.mean(axis=0)
    q75, q25 = np.percentile(y, [75, 25], axis=0, method="lower")
    sd = (q75 - q25) / 1.349
    keep = sd > 0
    y, sd = y[:, keep], sd[keep]
    ar1 = np.sum(y[1:] * y[:-1], axis=0) / np.sum(y * y, axis=0)
    diff_sd_mean = float(np.mean(np.sqrt(np.clip(2.0 * (1.0 - ar1), 0, None)) * sd))
    d = np.sqrt(np.mean(np.diff(y, axis=0) ** 2, axis=1))
    return np.concatenate([[np.nan], d]), np.concatenate([[np.nan], d / diff_sd_mean])


def _expand(df: pd.DataFrame, name: str, values: np.ndarray, order: str = "dpdp") -> None:
    """Add ``name`` and its derivative1 / power2 / derivative1_power2 expansions."""
    d = np.concatenate([[np.nan], np.diff(values)])
    cols = {name: values, f"{name}_derivative1": d, f"{name}_derivative1_power2": d**2,
            f"{name}_power2": values**2}
    if order == "dp2":
        keys = [name, f"{name}_derivative1", f"{name}_power2", f"{name}_derivative1_power2"]
    else:
        keys = [name, f"{name}_derivative1", f"{name}_derivative1_power2", f"{name}_power2"]
    for k in keys:
        df[k] = cols[k]


def compute_confounds(
    data: np.ndarray, wm: np.ndarray, csf: np.ndarray, motion: np.ndarray, tr: float,
    n_nss: int, fd_threshold: float = 0.5, dvars_threshold: float = 1.5,
) -> tuple[pd.DataFrame, dict]:
    """fMRIPrep-style confounds table and its JSON metadata.

    Parameters
    ----------
    data : numpy.ndarray, shape (T, V)
        Stored (dequantised) BOLD values of the brain-mask voxels.
    wm, csf : numpy.ndarray of bool, shape (V,)
        White-matter and CSF masks among those voxels.
    motion : numpy.ndarray, shape (T, 6)
        Realignment parameters.
    tr : float
    n_nss : int
        Non-steady-state volumes.
    fd_threshold, dvars_threshold : float
        Thresholds for the ``motion_outlierXX`` columns.

    Returns
    -------
    confounds : pandas.DataFrame
    metadata : dict
    """
    n_t = data.shape[0]
    basis = cosine_basis(n_t - n_nss, tr)
    # tCompCor mask: top 2 % temporal SD (after high-pass) of brain voxels
    sd = _highpass(data[n_nss:].astype(np.float64), basis).std(axis=0)
    n_top = max(5, int(round(0.02 * data.shape[1])))
    tmask = np.zeros(data.shape[1], dtype=bool)
    tmask[np.argsort(-sd, kind="stable")[:n_top]] = True

    df = pd.DataFrame(index=np.arange(n_t))
    _expand(df, "global_signal", data.mean(axis=1))
    _expand(df, "csf", data[:, csf].mean(axis=1))
    _expand(df, "white_matter", data[:, wm].mean(axis=1))
    df["csf_wm"] = data[:, wm | csf].mean(axis=1)
    df["tcompcor"] = data[:, tmask].mean(axis=1)
    dv, sdv = dvars(data)
    fd = framewise_displacement(motion)
    df["std_dvars"], df["dvars"], df["framewise_displacement"] = sdv, dv, fd
    df["rmsd"] = relative_rms(motion)

    meta: dict = {}
    blocks = [("t", tmask, "tCompCor", None, 3, 6), ("c", csf, "aCompCor", "CSF", 3, 6),
              ("w", wm, "aCompCor", "WM", 3, 6), ("a", wm | csf, "aCompCor", "combined", 5, 10)]
    for prefix, mask, method, label, n_min, n_max in blocks:
        comps, s = compcor(data[:, mask], n_nss, basis, n_min=n_min, n_max=n_max)
        for i in range(comps.shape[1]):
            df[f"{prefix}_comp_cor_{i:02d}"] = comps[:, i]
        meta.update(_compcor_meta(prefix, s, comps.shape[1], method, label))
    for i in range(basis.shape[1]):
        df[f"cosine{i:02d}"] = np.concatenate([np.zeros(n_nss), basis[:, i]])
    for i in range(n_nss):
        df[f"non_steady_state_outlier{i:02d}"] = (np.arange(n_t) == i).astype(float)
    names = ["trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z"]
    for j, name in enumerate(names):
        _expand(df, name, motion[:, j], order="dp2")
    outliers = np.flatnonzero((np.nan_to_num(fd) > fd_threshold)
                              | (np.nan_to_num(sdv) > dvars_threshold))
    if len(outliers):  # one concat: a column per outlier would fragment the frame
        spikes = {f"motion_outlier{i:02d}": (np.arange(n_t) == t).astype(float)
                  for i, t in enumerate(outliers)}
        df = pd.concat([df, pd.DataFrame(spikes, index=df.index)], axis=1)
    for name in ["csf", "csf_wm", "global_signal", "tcompcor", "white_matter"]:
        meta[name] = {"Method": "Mean"}
    meta = dict(sorted(meta.items()))
    return df, meta


def write_confounds(df: pd.DataFrame, meta: dict, tsv: Path) -> None:
    """Write the confounds TSV (``n/a`` for missing) and its JSON sidecar."""
    tsv.parent.mkdir(parents=True, exist_ok=True)
    text = df.to_csv(sep="\t", index=False, na_rep="n/a", float_format="%.10g",
                     lineterminator="\n")
    _write_text(tsv, text)
    _write_json(tsv.with_name(tsv.name.replace(".tsv", ".json")), meta)
