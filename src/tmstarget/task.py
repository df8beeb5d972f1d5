"""Task fMRI as a source of connectivity: the task design of a run, to regress out.

Many clinics have task fMRI and no resting run. Correlations computed on a task run mix two
things: the *evoked* responses every task-driven region shares (which inflate correlations
between regions that respond to the same stimuli) and the spontaneous, "background"
fluctuations that resting-state connectivity measures. Regressing the task design out of the
signal, together with the nuisance confounds, leaves the task residuals ("background
connectivity"; see the README section *Task scans as a source of connectivity* for what the
literature says about how close that is to rest).

:func:`task_design` builds that design for one run from its BIDS ``events.tsv``: one regressor
per ``trial_type``, events (boxcars of their ``duration``) convolved with SPM's canonical
haemodynamic response, each with its temporal derivative (nilearn's first-level design-matrix
tools, ``hrf_model="spm + derivative"``), sampled at the middle of each volume. The events
are validated against the run first; an error names the events file and says what to fix.

:func:`task_regression_enabled` resolves ``denoise.task_regression`` (``auto``/``on``/``off``)
and :func:`find_events_file` finds a run's ``events.tsv`` in the raw BIDS dataset.

This module is pure (no file is written) and is not wired into :mod:`tmstarget.denoise` here:
the cleaning operator adds :attr:`TaskDesign.regressors` to its confound matrix (see the
contract in :func:`task_design`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .errors import ConfigError, InputError

__all__ = ["HRF_MODEL", "TASK_REGRESSION_CHOICES", "TaskDesign", "find_events_file",
           "read_events", "task_design", "task_regression_enabled"]

#: nilearn HRF model: SPM's canonical double-gamma HRF and its temporal derivative.
HRF_MODEL = "spm + derivative"
#: Values of ``denoise.task_regression``.
TASK_REGRESSION_CHOICES = ("auto", "on", "off")
#: Task labels treated as rest (no design to regress) by ``auto``.
REST_TASKS = frozenset({"rest", "resting", "restingstate"})


@dataclass(frozen=True)
class TaskDesign:
    """The task regressors of one run (see :func:`task_design`).

    Attributes
    ----------
    regressors : numpy.ndarray, shape (n_volumes, k)
        One row per volume of the run as stored (non-steady-state volumes included), one column
        per ``names`` entry; float64, no constant column.
    names : list of str
        Column names: ``task_<trial_type>`` and ``task_<trial_type>_derivative`` per
        condition, in the sorted order of the trial types.
    conditions : list of str
        The trial types, sorted.
    events_file : str
        The events file they were built from.
    frame_times : numpy.ndarray, shape (n_volumes,)
        Seconds from the start of the run at which each volume is sampled.
    sidecar : dict
        What was done, for the denoise sidecar and the report (HRF model, slice-time
        reference, number of events per condition, events file).
    """

    regressors: np.ndarray
    names: list[str]
    conditions: list[str]
    events_file: str
    frame_times: np.ndarray
    sidecar: dict[str, Any] = field(default_factory=dict)


def read_events(events_file: str | os.PathLike[str]) -> pd.DataFrame:
    """Read a BIDS ``events.tsv`` (``n/a`` as missing), with a clear error when it cannot be."""
    path = Path(events_file)
    try:
        return pd.read_csv(path, sep="\t", na_values=["n/a"], keep_default_na=False)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise InputError(path, f"the events file cannot be read as a tab-separated table "
                         f"({exc}).", "Fix the file: BIDS events.tsv, tab-separated, with "
                         "onset and duration columns.") from None


def _validate(events: pd.DataFrame, path: Path, n_volumes: int, tr: float) -> pd.DataFrame:
    """Checked copy of the events: numeric onset/duration, a trial type each, inside the run."""
    missing = [c for c in ("onset", "duration") if c not in events.columns]
    if missing:
        raise InputError(path, f"the events file has no {' and no '.join(missing)} column "
                         f"(columns: {', '.join(map(str, events.columns)) or 'none'}).",
                         "BIDS events.tsv needs onset and duration (seconds) columns.")
    if events.empty:
        raise InputError(path, "the events file lists no events.",
                         "Add the run's events, or set denoise.task_regression: off to use the "
                         "run without a task design.")
    ev = events.copy()
    for col in ("onset", "duration"):
        values = pd.to_numeric(ev[col], errors="coerce")
        bad = np.flatnonzero(~np.isfinite(values.to_numpy(dtype=float)))
        if bad.size:
            rows = ", ".join(str(int(i) + 2) for i in bad[:5])
            raise InputError(path, f"{col} is missing or not a number on line(s) {rows}.",
                             f"Give every event a numeric {col} in seconds.")
        ev[col] = values.astype(float)
    neg = np.flatnonzero(ev["duration"].to_numpy() < 0)
    if neg.size:
        rows = ", ".join(str(int(i) + 2) for i in neg[:5])
        raise InputError(path, f"negative duration on line(s) {rows}.",
                         "Durations are seconds >= 0 (0 for an impulse).")
    if "trial_type" in ev.columns:
        tt = ev["trial_type"]
        bad = np.flatnonzero(tt.isna().to_numpy() | (tt.astype(str).str.strip() == ""))
        if bad.size:
            rows = ", ".join(str(int(i) + 2) for i in bad[:5])
            raise InputError(path, f"trial_type is empty or n/a on line(s) {rows}.",
                             "Give every event a trial_type (or remove the column: all events "
                             "are then one condition).")
        ev["trial_type"] = tt.astype(str).str.strip()
    else:
        ev["trial_type"] = "events"
    run_s = n_volumes * tr
    late = np.flatnonzero(ev["onset"].to_numpy() >= run_s)
    if late.size:
        raise InputError(path, f"{late.size} event(s) start at or after the end of the run "
                         f"(latest onset {ev['onset'].max():.2f} s; the run is {n_volumes} "
                         f"volumes x TR {tr:g} s = {run_s:.2f} s).",
                         "Check that this events file belongs to this run, and the run's "
                         "RepetitionTime (sidecar and NIfTI header can disagree).")
    early = np.flatnonzero((ev["onset"] + ev["duration"]).to_numpy() <= 0)
    if early.size:
        raise InputError(path, f"{early.size} event(s) end before the run starts "
                         "(onset + duration <= 0 s).", "Check that this events file belongs "
                         "to this run (onsets are seconds from the first volume).")
    return ev


def task_design(events_file: str | os.PathLike[str], n_volumes: int, tr: float,
                slice_time_ref: float = 0.5) -> TaskDesign:
    """The task design of one run: events convolved with SPM's canonical HRF + derivative.

    Contract (for the cleaning operator that uses it): the returned
    :attr:`TaskDesign.regressors` has one row per volume of the run *as stored in the BOLD
    file* (the first row is the first volume, non-steady-state volumes included), so it is
    cut, censored and filtered exactly like the run's confound rows; it is to be regressed out
    of the BOLD together with the nuisance confounds, in the same least-squares fit (not one
    after the other), and filtered with the same temporal filter as the confounds. It has no
    constant column (the operator's own intercept or detrending covers it) and its columns
    are not standardised. Connectivity is then computed on the residuals.

    Parameters
    ----------
    events_file : path-like
        BIDS ``events.tsv`` of the run: ``onset`` and ``duration`` (seconds from the start of
        the first volume in the file), optional ``trial_type`` (one regressor each; all events
        are one condition ``events`` without it). Other columns are ignored.
    n_volumes : int
        Volumes in the run's BOLD file.
    tr : float
        Repetition time, seconds.
    slice_time_ref : float, optional
        Where in each TR the volume is sampled, as a fraction of the TR (0.5: the middle of
        the acquisition, for data without slice-timing correction, like the built-in path's).

    Returns
    -------
    TaskDesign

    Raises
    ------
    InputError
        Naming ``events_file``: unreadable, no ``onset``/``duration`` column, no events,
        non-numeric or missing onsets or durations, negative durations, empty trial types,
        events starting at or after the end of the run or ending before it starts.
    ValueError
        ``n_volumes`` < 1, ``tr`` <= 0 or ``slice_time_ref`` outside [0, 1].
    """
    from nilearn.glm.first_level import make_first_level_design_matrix

    if int(n_volumes) < 1 or not np.isfinite(tr) or float(tr) <= 0:
        raise ValueError(f"n_volumes ({n_volumes}) must be >= 1 and tr ({tr}) > 0")
    if not 0.0 <= float(slice_time_ref) <= 1.0:
        raise ValueError(f"slice_time_ref must be in [0, 1], not {slice_time_ref}")
    path = Path(events_file)
    ev = _validate(read_events(path), path, int(n_volumes), float(tr))
    frame_times = (np.arange(int(n_volumes)) + float(slice_time_ref)) * float(tr)
    conditions = sorted(ev["trial_type"].unique())
    dm = make_first_level_design_matrix(
        frame_times, ev[["onset", "duration", "trial_type"]], hrf_model=HRF_MODEL,
        drift_model=None)
    names, cols = [], []
    for cond in conditions:
        for suffix in ("", "_derivative"):
            names.append(f"task_{cond}{suffix}")
            cols.append(dm[f"{cond}{suffix}"].to_numpy(dtype=float))
    regressors = np.column_stack(cols)
    counts = ev["trial_type"].value_counts()
    sidecar = {"events_file": str(path), "hrf_model": HRF_MODEL,
               "slice_time_ref": float(slice_time_ref), "conditions": conditions,
               "n_events": {c: int(counts[c]) for c in conditions},
               "columns": names, "n_volumes": int(n_volumes), "repetition_time": float(tr)}
    return TaskDesign(regressors, names, conditions, str(path), frame_times, sidecar)


def task_regression_enabled(setting: str | bool | None, task: str | None,
                            events_file: str | os.PathLike[str] | None) -> bool:
    """Whether a run's task design is regressed out (``denoise.task_regression``).

    Parameters
    ----------
    setting : {"auto", "on", "off"}
        ``auto`` (default): on when the run's task is not rest and an events file exists.
        ``on``: always; a missing events file is an error. ``off``: never.
    task : str or None
        The run's BIDS task label.
    events_file : path-like or None
        The run's events file (:func:`find_events_file`), or None.

    Raises
    ------
    ConfigError
        An unknown setting.
    InputError
        ``on`` without an events file.
    """
    value = "auto" if setting is None else setting
    if value is True:
        value = "on"  # YAML reads a bare on/off as a boolean
    elif value is False:
        value = "off"
    if value not in TASK_REGRESSION_CHOICES:
        raise ConfigError(None, f"denoise.task_regression is '{setting}'.",
                          "Use auto, on or off.")
    have = events_file is not None and Path(events_file).is_file()
    if value == "off":
        return False
    if value == "on":
        if not have:
            raise InputError(events_file or "events.tsv", "denoise.task_regression is on but "
                             f"the run (task '{task}') has no events file.",
                             "Add the run's BIDS events.tsv next to its BOLD in the raw "
                             "dataset, or set denoise.task_regression: auto or off.")
        return True
    return have and str(task or "").lower() not in REST_TASKS


def find_events_file(bids_dir: str | os.PathLike[str] | None,
                     entities: Mapping[str, str | None]) -> Path | None:
    """The ``events.tsv`` of a run in a raw BIDS dataset, or None.

    Looks for ``sub-X[_ses-Y]_task-Z[_acq-A][_run-N]_events.tsv`` in the run's ``func/``
    folder, then (BIDS inheritance) for the same name without ``run``/``acq``, then for
    ``task-Z_events.tsv`` at the top of the dataset.

    Parameters
    ----------
    bids_dir : path-like or None
        The raw BIDS dataset (None: nothing to find, e.g. fMRIPrep derivatives given alone).
    entities : mapping
        ``subject``, ``session``, ``task``, ``acquisition``, ``run`` (labels without prefix;
        ``subject`` and ``task`` required).
    """
    if not bids_dir:
        return None
    root = Path(bids_dir)
    sub, ses, task = entities.get("subject"), entities.get("session"), entities.get("task")
    if not sub or not task:
        return None
    sub = str(sub).removeprefix("sub-")
    func = root / f"sub-{sub}" / (f"ses-{ses}" if ses else "") / "func"
    base = f"sub-{sub}" + (f"_ses-{ses}" if ses else "") + f"_task-{task}"
    acq = f"_acq-{entities['acquisition']}" if entities.get("acquisition") else ""
    run = entities.get("run")
    run_s = f"_run-{run}" if run not in (None, "") else ""
    for name in (f"{base}{acq}{run_s}_events.tsv", f"{base}{acq}_events.tsv",
                 f"{base}_events.tsv"):
        if (func / name).is_file():
            return func / name
    top = root / f"task-{task}_events.tsv"
    return top if top.is_file() else None
