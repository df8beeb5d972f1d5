"""Temporal cleaning of one run: named confound strategies, censoring, and the cleaning operator.

This module is the science of *what is done to each voxel's time series*; :mod:`tmstarget.denoise`
streams the BOLD file through it. It does not use ``nilearn.signal.clean(sample_mask=...)``
nor ``nilearn.interfaces.fmriprep.load_confounds``: see README, "Known upstream issues".

Confounds
---------
The confounds table is read **from the path the caller gives** (the file that is validated,
counted and hashed is the file regressed), with its JSON sidecar (needed for CompCor masks).
Each named strategy (:data:`STRATEGIES`) lists the exact fMRIPrep columns it regresses; the
columns used are recorded in every sidecar. Problems are errors naming the file and column:
duplicated column names; ``n/a`` anywhere except the leading rows of the columns fMRIPrep
leaves undefined there (``*_derivative1*``, ``framewise_displacement``, ``dvars``,
``std_dvars``: backward differences have no value at the first volume); missing columns.
Leading ``n/a`` are read as 0 (no change at the first volume), as fMRIPrep intends.

Censoring
---------
A volume is dropped when it is a non-steady-state volume (any ``non_steady_state_outlier*``
column is 1), when its framewise displacement exceeds ``fd_threshold`` or its standardised
DVARS exceeds ``std_dvars_threshold``, or when it lies in a stretch of uncensored volumes
shorter than ``min_segment`` (Power et al. 2014, NeuroImage 84:320).

The cleaning operator
---------------------
For the volumes kept, ``K`` (sorted), with ``s = K[0]``, ``e = K[-1]``:

1. volumes before ``s`` and after ``e`` (non-steady-state and edge-censored volumes) are
   dropped *before* anything else: nothing is extrapolated;
2. censored volumes inside ``[s, e]`` are replaced by a cubic spline through the kept
   volumes only (``scipy.interpolate.CubicSpline``, not-a-knot ends; the interpolation
   nilearn intends), in the signals and in the confounds alike;
3. signals and confounds are linearly detrended and band-passed alike (Butterworth, order 5,
   second-order sections, forward-backward, odd padding: the filter nilearn uses), so that the
   filter and the regression stay orthogonal (Lindquist et al. 2019, Hum Brain Mapp 40:2358);
4. the filtered confounds are z-scored and projected out (least squares, rank-revealing QR);
5. the censored volumes are removed.

Every step is linear in the data and uses the kept volumes only, so the whole run's cleaning is
one matrix ``L`` (kept volumes x run volumes) whose columns at dropped volumes are exactly
zero: by construction, what a censored or non-steady-state volume holds cannot change the
output, and censoring the last ``k`` volumes is the same as deleting them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .errors import ConfigError, InputError

#: The six rigid-body realignment parameters as fMRIPrep names them.
MOTION6: tuple[str, ...] = ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z")
#: Physiological summary signals as fMRIPrep names them.
WM, CSF, GS = "white_matter", "csf", "global_signal"
#: Suffixes of fMRIPrep's expansions.
D1, P2, D1P2 = "_derivative1", "_power2", "_derivative1_power2"

#: Columns fMRIPrep leaves undefined (n/a) at the first volume(s).
_LEADING_NA = re.compile(r"(_derivative1|^framewise_displacement$|^dvars$|^std_dvars$|^rmsd$)")


def column(df: pd.DataFrame, name: str, rows: np.ndarray | None = None) -> np.ndarray:
    """One confound column as float64, validated.

    Leading ``n/a`` are allowed (and read as 0) only in the columns fMRIPrep leaves undefined at
    the first volume (backward differences: ``*_derivative1*``, framewise displacement, DVARS,
    RMSD); any other missing or infinite value is an error naming the file, column and line --
    unless ``rows`` (bool) is given and the value lies in a row that is not used (a censored or
    non-steady-state volume: what it holds cannot matter), where it is set to 0.
    """
    path = df.attrs.get("path")
    v = df[name].to_numpy(dtype=np.float64)
    missing = ~np.isfinite(v)
    if not missing.any():
        return v
    relevant = missing.copy() if rows is None else missing & np.asarray(rows, bool)
    if _LEADING_NA.search(name) is not None:  # leading n/a of a backward difference: defined 0
        lead = int(np.argmax(~missing)) if (~missing).any() else len(v)
        if lead < len(v) and np.isnan(v[:lead]).all():
            relevant[:lead] = False
    if not relevant.any():
        v = v.copy()
        v[missing] = 0.0
        return v
    bad = np.flatnonzero(relevant)
    where = ", ".join(str(int(r) + 2) for r in bad[:5]) + (" ..." if bad.size > 5 else "")
    raise InputError(path, f"column '{name}' has {bad.size} missing or infinite value(s) (file "
                     f"line(s) {where}); only the leading rows of derivative, framewise-"
                     "displacement and DVARS columns may be 'n/a'.",
                     "Regenerate the confounds with fMRIPrep: a value left out of this column "
                     "would silently keep, censor or regress the wrong volumes.")


def _expand(base: Sequence[str], *suffixes: str) -> tuple[str, ...]:
    return tuple(f"{b}{s}" for b in base for s in ("", *suffixes))


@dataclass(frozen=True)
class Strategy:
    """A named denoising strategy: exactly which regressors, which filter, which smoothing.

    Attributes
    ----------
    name : str
        Name recorded in every output (``fox2012``, ``36p``, ``acompcor``).
    columns : tuple of str
        fMRIPrep confound columns regressed, in this order (CompCor and cosine columns are
        added from the file, see ``compcor`` and ``cosines``).
    compcor : tuple of (str, int)
        ``(mask, n)`` pairs: the first ``n`` retained aCompCor components of fMRIPrep's
        ``mask`` (``"WM"``, ``"CSF"`` or ``"combined"``), read from the confounds JSON.
    cosines : bool
        Regress fMRIPrep's ``cosine*`` (discrete cosine high-pass) columns.
    high_pass, low_pass : float or None
        Butterworth band-pass edges (Hz).
    smoothing_fwhm : float or None
        Isotropic Gaussian smoothing (mm; None or 0 = none).
    detrend : bool
        Remove a linear trend (signals and confounds).
    reference : str
        The published source of the strategy, regressor for regressor.
    """

    name: str
    columns: tuple[str, ...]
    compcor: tuple[tuple[str, int], ...] = ()
    cosines: bool = False
    high_pass: float | None = 0.01
    low_pass: float | None = 0.08
    smoothing_fwhm: float | None = 6.0
    detrend: bool = True
    reference: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description (recorded in every sidecar): only what the strategy does."""
        d: dict[str, Any] = {"name": self.name, "regressors": list(self.columns)}
        if self.compcor:
            d["compcor"] = [{"mask": m, "n_components": n} for m, n in self.compcor]
        if self.cosines:
            d["cosine_regressors"] = True
        d.update({"detrend": "linear" if self.detrend else None,
                  "high_pass": self.high_pass, "low_pass": self.low_pass,
                  "filter": ("butterworth order 5, second-order sections, forward-backward"
                             if (self.high_pass or self.low_pass) else None),
                  "smoothing_fwhm": self.smoothing_fwhm, "reference": self.reference})
        return d


STRATEGIES: dict[str, Strategy] = {
    "fox2012": Strategy(
        "fox2012", _expand((*MOTION6, WM, CSF, GS), D1),
        high_pass=0.009, low_pass=0.08, smoothing_fwhm=6.0,
        reference="Fox et al. 2012 (Biol Psychiatry 72:595), processing as in Fox et al. 2005 "
                  "(PNAS 102:9673) and Van Dijk et al. 2010 (J Neurophysiol 103:297): linear "
                  "detrending; band-pass 0.009-0.08 Hz; 6 mm FWHM smoothing; regression of the "
                  "six rigid-body motion parameters, the whole-brain (global) signal, the "
                  "ventricular (CSF) signal and the white-matter signal, and the first temporal "
                  "derivatives (backward differences) of these nine: 18 regressors."),
    "36p": Strategy(
        "36p", _expand((*MOTION6, WM, CSF, GS), D1, P2, D1P2),
        high_pass=0.01, low_pass=0.08, smoothing_fwhm=6.0,
        reference="Satterthwaite et al. 2013 (NeuroImage 64:240) / Ciric et al. 2017 "
                  "(NeuroImage 154:174) '36P': six motion parameters, white-matter, CSF and "
                  "global signals (9), their first temporal derivatives (9) and the squares of "
                  "all 18: 36 regressors; band-pass 0.01-0.08 Hz."),
    "acompcor": Strategy(
        "acompcor", _expand(MOTION6, D1), compcor=(("WM", 5), ("CSF", 5)), cosines=True,
        high_pass=0.01, low_pass=0.08, smoothing_fwhm=6.0,
        reference="Muschelli et al. 2014 (NeuroImage 96:22) aCompCor as benchmarked by Ciric "
                  "et al. 2017 (NeuroImage 154:174) and implemented in XCP-D ('acompcor'): six "
                  "motion parameters and their first temporal derivatives (12), the first 5 "
                  "aCompCor components of the white-matter mask and the first 5 of the CSF mask "
                  "(fMRIPrep w_comp_cor_*, c_comp_cor_*; fewer when fMRIPrep retained fewer), no "
                  "global signal; band-pass 0.01-0.08 Hz. fMRIPrep's cosine regressors are "
                  "included because its CompCor components were computed after that high-pass."),
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
    if changes:
        s = replace(s, **changes)
        s = replace(s, reference=s.reference + " Overridden in the config: " + ", ".join(
            f"{k} = {v:g}" for k, v in sorted(changes.items())) + ".")
    if s.high_pass is not None and s.low_pass is not None and s.high_pass >= s.low_pass:
        raise ConfigError(None, f"denoise.high_pass ({s.high_pass} Hz) must be below "
                          f"denoise.low_pass ({s.low_pass} Hz).")
    return s


# --------------------------------------------------------------------------- confounds file
def read_confounds(path: str | Path, n_volumes: int, bold_name: str = "") -> pd.DataFrame:
    """Read and validate an fMRIPrep confounds TSV.

    Parameters
    ----------
    path : path
        ``…_desc-confounds_timeseries.tsv``.
    n_volumes : int
        Volumes of the BOLD run it belongs to.
    bold_name : str
        The BOLD file's name, for messages.

    Returns
    -------
    pandas.DataFrame
        float64 columns (``n/a`` as NaN; :func:`column` validates a column before use), with
        ``attrs["path"]`` set for messages.

    Raises
    ------
    InputError
        Missing, unreadable, wrong length, duplicated or non-numeric columns.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "the confounds file does not exist.",
                         "Check the fMRIPrep output for this run.")
    try:
        with open(path, encoding="utf-8") as fh:
            header = fh.readline().rstrip("\r\n").split("\t")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(path, f"the confounds TSV cannot be read ({exc}).",
                         "Regenerate it with fMRIPrep.") from exc
    seen: dict[str, int] = {}
    for name in header:
        seen[name] = seen.get(name, 0) + 1
    dup = sorted(k for k, v in seen.items() if v > 1)
    if dup:
        raise InputError(path, f"column(s) {', '.join(repr(d) for d in dup[:5])} appear more "
                         "than once in the header; which one is meant is ambiguous.",
                         "Remove the duplicate columns (a confounds table edited by hand or "
                         "by a script?) or regenerate it with fMRIPrep.")
    try:
        raw = pd.read_csv(path, sep="\t", na_values=["n/a"], keep_default_na=False)
    except Exception as exc:
        raise InputError(path, f"the confounds TSV cannot be read ({exc}).",
                         "Regenerate it with fMRIPrep.") from exc
    if len(raw) != n_volumes:
        raise InputError(path, f"the confounds table has {len(raw)} rows but the BOLD run "
                         f"{bold_name} has {n_volumes} volumes.",
                         "The confounds file belongs to another run or was truncated: use the "
                         "one fMRIPrep wrote beside this BOLD file.")
    bad = [c for c in raw.columns if not pd.api.types.is_numeric_dtype(raw[c])]
    if bad:
        raise InputError(path, f"non-numeric values in column(s) {', '.join(bad[:5])}.",
                         "Only numbers and 'n/a' are allowed in a confounds TSV.")
    out = raw.astype(np.float64)
    out.attrs["path"] = str(path)
    return out


def read_confounds_metadata(tsv: str | Path) -> dict[str, Any]:
    """The confounds JSON sidecar beside ``tsv`` (``{}`` when absent).

    Raises
    ------
    InputError
        The sidecar exists but is not a JSON object (the error names the JSON, not the TSV).
    """
    js = Path(str(tsv).replace(".tsv", ".json"))
    if not js.is_file():
        return {}
    try:
        meta = json.loads(js.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(js, f"the confounds JSON sidecar is not valid JSON ({exc}).",
                         "Repair it or copy the one fMRIPrep wrote.") from exc
    if not isinstance(meta, dict):
        raise InputError(js, "the confounds JSON sidecar is not a JSON object.",
                         "Copy the one fMRIPrep wrote beside the confounds TSV.")
    return meta


def select_regressors(df: pd.DataFrame, meta: Mapping[str, Any], strategy: Strategy,
                      path: str | Path, rows: np.ndarray | None = None
                      ) -> tuple[np.ndarray, list[str]]:
    """The confound matrix of a strategy and its exact column names.

    Parameters
    ----------
    df : pandas.DataFrame
        From :func:`read_confounds`.
    meta : mapping
        From :func:`read_confounds_metadata` (CompCor masks).
    strategy : Strategy
    path : path
        The confounds file, for messages.
    rows : numpy.ndarray of bool, optional
        The volumes used (values elsewhere are never used and are not validated).

    Returns
    -------
    matrix : numpy.ndarray (volumes, regressors), float64
    names : list of str

    Raises
    ------
    InputError
        A column the strategy needs is missing, naming it.
    """
    names = list(strategy.columns)
    missing = [c for c in names if c not in df.columns]
    if missing:
        raise InputError(path, f"strategy '{strategy.name}' needs column(s) "
                         f"{', '.join(missing[:6])}{' ...' if len(missing) > 6 else ''}, which "
                         "this confounds table does not have.",
                         "Use fMRIPrep >= 20.2 confounds (they have every column), or choose "
                         "another denoise.strategy.")
    for mask, n in strategy.compcor:
        prefix = {"WM": "w_comp_cor_", "CSF": "c_comp_cor_", "combined": "a_comp_cor_"}[mask]
        cols = sorted(c for c in df.columns if c.startswith(prefix))
        if not cols:  # fMRIPrep < 20: all aCompCor in a_comp_cor_*, mask in the JSON
            cols = sorted(c for c in df.columns if c.startswith("a_comp_cor_")
                          and str((meta.get(c) or {}).get("Mask", "")).lower() == mask.lower())
        if meta:
            cols = [c for c in cols if (meta.get(c) or {}).get("Retained", True) is not False]
        if not cols:
            raise InputError(path, f"strategy '{strategy.name}' needs aCompCor components of "
                             f"the {mask} mask ({prefix}*), which this confounds table does "
                             "not have.", "Use fMRIPrep >= 20.2 confounds, or choose another "
                             "denoise.strategy.")
        names += cols[:n]
    if strategy.cosines:
        names += sorted(c for c in df.columns if re.fullmatch(r"cosine_?\d+", c))
    return np.column_stack([column(df, c, rows) for c in names]) if names else \
        np.zeros((len(df), 0)), names


# --------------------------------------------------------------------------- censoring
@dataclass
class Censoring:
    """Which volumes of a run are kept, and why the others are not.

    Attributes
    ----------
    keep : numpy.ndarray of bool
        Volumes that enter the cleaned series.
    non_steady_state, motion, short_segment : numpy.ndarray of bool
        Why a volume was dropped (a volume can have several reasons).
    """

    keep: np.ndarray
    non_steady_state: np.ndarray
    motion: np.ndarray
    short_segment: np.ndarray
    details: dict[str, Any] = field(default_factory=dict)


def censoring(df: pd.DataFrame, fd_threshold: float, std_dvars_threshold: float | None = None,
              min_segment: int = 5) -> Censoring:
    """Censoring of one run from its confounds table.

    Parameters
    ----------
    df : pandas.DataFrame
        From :func:`read_confounds`.
    fd_threshold : float
        Framewise displacement (mm) above which a volume is censored.
    std_dvars_threshold : float or None
        Standardised DVARS above which a volume is censored (None: not used).
    min_segment : int
        Stretches of uncensored volumes shorter than this are censored too.

    Returns
    -------
    Censoring
    """
    n = len(df)
    nss_cols = [c for c in df.columns if c.startswith("non_steady_state_outlier")]
    nss = np.zeros(n, bool)
    for c in nss_cols:
        nss |= column(df, c) > 0
    motion = np.zeros(n, bool)
    if "framewise_displacement" in df:
        motion |= column(df, "framewise_displacement") > float(fd_threshold)
    elif fd_threshold is not None and np.isfinite(float(fd_threshold)):
        raise InputError(df.attrs.get("path"), "the confounds table has no "
                         "'framewise_displacement' column, so motion scrubbing cannot be done.",
                         "Use fMRIPrep's confounds table.")
    if std_dvars_threshold:
        if "std_dvars" not in df:
            raise InputError(df.attrs.get("path"), "denoise.std_dvars_threshold is set but the "
                             "confounds table has no 'std_dvars' column.",
                             "Use fMRIPrep's confounds table or unset the threshold.")
        motion |= column(df, "std_dvars") > float(std_dvars_threshold)
    ok = ~(nss | motion)
    short = np.zeros(n, bool)
    t = 0
    while t < n:
        if not ok[t]:
            t += 1
            continue
        u = t
        while u < n and ok[u]:
            u += 1
        if u - t < int(min_segment):
            short[t:u] = True
        t = u
    keep = ok & ~short
    return Censoring(keep, nss, motion, short)


def split_keep(keep: np.ndarray, gap_volumes: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The two halves of a run's kept volumes, each to be cleaned on its own.

    Half A is the first ``h`` kept volumes, half B the last ``h``, with ``h`` as large as
    possible such that at least ``gap_volumes`` volumes (kept or not) separate them.

    Returns
    -------
    keep_a, keep_b : numpy.ndarray of bool
    """
    idx = np.flatnonzero(keep)
    gap = max(0, int(gap_volumes))
    h = len(idx) // 2
    while h > 0 and idx[len(idx) - h] - idx[h - 1] - 1 < gap:
        h -= 1
    a = np.zeros(len(keep), bool)
    b = np.zeros(len(keep), bool)
    if h > 0:
        a[idx[:h]] = True
        b[idx[len(idx) - h:]] = True
    return a, b


# --------------------------------------------------------------------------- operator
def _butterworth_sos(tr: float, high_pass: float | None, low_pass: float | None):
    from scipy import signal as sps

    fs = 1.0 / tr
    nyq = fs / 2.0
    eps = float(np.finfo(np.float32).eps)
    edges = []
    if high_pass:
        edges.append(min(float(high_pass), nyq * (1 - 10 * eps)))
    if low_pass and float(low_pass) < nyq:
        edges.append(float(low_pass))
    elif low_pass:  # at or above Nyquist: nothing to low-pass
        low_pass = None
    if not edges:
        return None
    btype = "band" if (high_pass and low_pass) else ("highpass" if high_pass else "lowpass")
    wn = edges if btype == "band" else edges[0]
    return sps.butter(5, wn, btype=btype, output="sos", fs=fs)


def cleaning_operator(keep: np.ndarray, confounds: np.ndarray | None, tr: float,
                      strategy: Strategy, where: str | Path | None = None) -> np.ndarray:
    """The linear cleaning operator of one run (see the module docstring).

    Parameters
    ----------
    keep : numpy.ndarray of bool, (n,)
        Volumes kept (not non-steady-state, not censored).
    confounds : numpy.ndarray (n, p) or None
        Confound regressors of the run (rows at dropped volumes are never used).
    tr : float
        Repetition time (s).
    strategy : Strategy
        Filter and detrending settings.
    where : path, optional
        The run, for messages.

    Returns
    -------
    numpy.ndarray (k, n), float64
        ``L``: ``L @ x`` is the cleaned series of the ``k`` kept volumes for a run ``x`` of
        ``n`` volumes. Columns of dropped volumes are exactly zero.

    Raises
    ------
    InputError
        Too few kept volumes for the filter.
    """
    from scipy import linalg
    from scipy import signal as sps
    from scipy.interpolate import CubicSpline

    keep = np.asarray(keep, bool)
    n = keep.size
    idx = np.flatnonzero(keep)
    k = idx.size
    if k < 3:
        raise InputError(where, f"only {k} volume(s) are left after censoring.",
                         "This run has too much motion to be used.")
    s, e = int(idx[0]), int(idx[-1])
    m = e - s + 1
    pos = idx - s
    # 1-2. interpolation of the censored volumes inside [s, e] from the kept ones: (m x k)
    if k == m:
        interp = np.eye(m)
    else:
        interp = CubicSpline(pos.astype(float), np.eye(k), axis=0, bc_type="not-a-knot",
                             extrapolate=False)(np.arange(m, dtype=float))
        interp[pos] = np.eye(k)  # exact at the kept volumes
    # 3. linear detrending (mean and slope), then the band-pass, as matrices (m x m)
    op = interp
    if strategy.detrend:
        t = np.arange(m, dtype=float)
        x = np.column_stack([np.ones(m), (t - t.mean()) / max(t.std(), 1.0)])
        q, _ = np.linalg.qr(x)
        op = op - q @ (q.T @ op)
    sos = _butterworth_sos(tr, strategy.high_pass, strategy.low_pass)
    if sos is not None:
        padlen = 3 * (2 * len(sos) + 1 - min((sos[:, 2] == 0).sum(), (sos[:, 5] == 0).sum()))
        if m <= padlen:
            raise InputError(where, f"only {m} volumes remain between the first and last kept "
                             f"volume; the band-pass filter needs more than {padlen}.",
                             "Use a longer run, or (knowingly) raise denoise.fd_threshold.")
        op = sps.sosfiltfilt(sos, op, axis=0, padtype="odd")
    # 4. confounds: the same interpolation, detrending and filter, z-scored, projected out
    if confounds is not None and confounds.shape[1]:
        c = op @ np.asarray(confounds, float)[idx]
        c = c - c.mean(axis=0)
        sd = c.std(axis=0)
        c = c[:, sd > 0] / sd[sd > 0]
        if c.shape[1]:
            qc, rc, _ = linalg.qr(c, mode="economic", pivoting=True)
            qc = qc[:, np.abs(np.diag(rc)) > np.finfo(np.float64).eps * 100.0]
            op = op - qc @ (qc.T @ op)
    # 5. keep the kept volumes; embed in the run's volume axis (zeros at dropped volumes)
    out = np.zeros((k, n), dtype=np.float64)
    out[:, idx] = op[pos]
    return out


def stack_operators(parts: Sequence[np.ndarray]) -> tuple[np.ndarray, list[slice]]:
    """Several operators of one run stacked, so one pass over the data applies them all.

    Returns the stacked matrix and the row slice of each part.
    """
    slices, r = [], 0
    for p in parts:
        slices.append(slice(r, r + p.shape[0]))
        r += p.shape[0]
    return np.vstack(parts), slices


def fd_summary(df: pd.DataFrame) -> np.ndarray:
    """Framewise displacement per volume (0 where fMRIPrep leaves it undefined)."""
    if "framewise_displacement" not in df:
        return np.zeros(len(df))
    return column(df, "framewise_displacement")
