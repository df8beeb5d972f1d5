"""Task design of a run from its events.tsv (tmstarget.task).

Oracle: SPM's canonical HRF written here from its published description (a difference of two
gamma densities: response peaking at ~5 s (shape 6, scale 1 s), undershoot at ~15 s (shape
16), undershoot ratio 1/6; Friston et al. 1998), convolved with the events' boxcars on a fine
grid in plain numpy/scipy, independently of nilearn.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from tmstarget.errors import ConfigError, InputError
from tmstarget.task import find_events_file, task_design, task_regression_enabled

REPO = Path(__file__).resolve().parents[1]
REAL_EVENTS = REPO / "data_real" / "sub-02" / "func" / "sub-02_task-oneback_run-1_events.tsv"


def _write(path: Path, rows: list[dict] | str) -> Path:
    if isinstance(rows, str):
        path.write_text(rows)
    else:
        pd.DataFrame(rows).to_csv(path, sep="\t", index=False, na_rep="n/a")
    return path


def _spm_hrf(t: np.ndarray) -> np.ndarray:
    h = stats.gamma.pdf(t, 6.0) - stats.gamma.pdf(t, 16.0) / 6.0
    return h / h.sum()


def _oracle(onsets, durations, frame_times, dt=0.01):
    grid = np.arange(0, frame_times[-1] + 40, dt)
    box = np.zeros_like(grid)
    for o, d in zip(onsets, durations, strict=True):
        box[(grid >= o) & (grid < o + max(d, dt))] = 1.0
    conv = np.convolve(box, _spm_hrf(np.arange(0, 32, dt)))[: grid.size]
    return np.interp(frame_times, grid, conv)


def test_regressors_match_an_independent_convolution(tmp_path):
    ev = _write(tmp_path / "e.tsv", [
        {"onset": 10, "duration": 12, "trial_type": "b"},
        {"onset": 50, "duration": 12, "trial_type": "a"},
        {"onset": 80, "duration": 0, "trial_type": "a"},
        {"onset": 95.5, "duration": 3, "trial_type": "b"}])
    d = task_design(ev, n_volumes=60, tr=2.0)
    assert d.regressors.shape == (60, 4)
    assert d.names == ["task_a", "task_a_derivative", "task_b", "task_b_derivative"]
    np.testing.assert_allclose(d.frame_times, (np.arange(60) + 0.5) * 2.0)
    for cond, ons, durs in (("a", [50, 80], [12, 0]), ("b", [10, 95.5], [12, 3])):
        col = d.regressors[:, d.names.index(f"task_{cond}")]
        ref = _oracle(ons, durs, d.frame_times)
        r = np.corrcoef(col, ref)[0, 1]
        assert r > 0.999, f"{cond}: r = {r:.4f} with the independent SPM-HRF convolution"
        # the temporal derivative column follows the regressor's rate of change
        der = d.regressors[:, d.names.index(f"task_{cond}_derivative")]
        assert abs(np.corrcoef(der, np.gradient(ref))[0, 1]) > 0.95
    # nothing before the first event (no constant column, no drift)
    assert np.allclose(d.regressors[:5], 0.0)
    assert d.sidecar["n_events"] == {"a": 2, "b": 2}


def test_slice_time_reference_shifts_the_sampling(tmp_path):
    ev = _write(tmp_path / "e.tsv", [{"onset": 20, "duration": 4, "trial_type": "x"}])
    early = task_design(ev, 40, 2.0, slice_time_ref=0.0)
    mid = task_design(ev, 40, 2.0)
    np.testing.assert_allclose(early.frame_times + 1.0, mid.frame_times)
    assert not np.allclose(early.regressors, mid.regressors)


def test_without_trial_type_all_events_are_one_condition(tmp_path):
    ev = _write(tmp_path / "e.tsv", "onset\tduration\n4\t2\n30\t2\n")
    d = task_design(ev, 30, 2.0)
    assert d.names == ["task_events", "task_events_derivative"]


@pytest.mark.parametrize(("content", "message"), [
    ("onset\ttrial_type\n1\ta\n", "no duration column"),
    ("start\tlength\n1\t2\n", "no onset and no duration column"),
    ("onset\tduration\ttrial_type\n", "lists no events"),
    ("onset\tduration\ttrial_type\n1\t-2\ta\n", "negative duration on line"),
    ("onset\tduration\ttrial_type\nn/a\t2\ta\n", "onset is missing or not a number on line"),
    ("onset\tduration\ttrial_type\n1\tabc\ta\n", "duration is missing or not a number"),
    ("onset\tduration\ttrial_type\n1\t2\tn/a\n", "trial_type is empty or n/a on line"),
    ("onset\tduration\ttrial_type\n1\t2\ta\n60\t2\ta\n", "start at or after the end of the run"),
    ("onset\tduration\ttrial_type\n-30\t2\ta\n", "end before the run starts"),
])
def test_events_that_do_not_fit_the_run_name_the_file(tmp_path, content, message):
    ev = _write(tmp_path / "sub-01_task-x_events.tsv", content)
    with pytest.raises(InputError, match=message) as info:
        task_design(ev, n_volumes=30, tr=2.0)  # a 60 s run
    assert "sub-01_task-x_events.tsv" in str(info.value)


def test_negative_onsets_allowed_when_the_event_reaches_into_the_run(tmp_path):
    ev = _write(tmp_path / "e.tsv", "onset\tduration\ttrial_type\n-2\t6\ta\n")
    assert task_design(ev, 30, 2.0).regressors[:, 0].max() > 0


def test_real_events_fit_their_run_and_catch_the_wrong_tr():
    """The real participant's localizer: 6 categories x 32 images in 156 volumes at TR 2 s;
    with dcm2niix's estimated TR (1.79 s) the last blocks fall after the end of the run."""
    d = task_design(REAL_EVENTS, 156, 2.0)
    assert d.regressors.shape == (156, 12)
    assert d.sidecar["n_events"] == dict.fromkeys(
        ("body", "face", "house", "object", "scene", "scramble"), 32)
    with pytest.raises(InputError, match="RepetitionTime"):
        task_design(REAL_EVENTS, 156, 1.79355)


def test_task_regression_setting(tmp_path):
    ev = _write(tmp_path / "e.tsv", "onset\tduration\n1\t1\n")
    assert task_regression_enabled("auto", "oneback", ev) is True
    assert task_regression_enabled("auto", "rest", ev) is False
    assert task_regression_enabled("auto", "oneback", None) is False
    assert task_regression_enabled(None, "oneback", ev) is True
    assert task_regression_enabled("off", "oneback", ev) is False
    assert task_regression_enabled(False, "oneback", ev) is False  # YAML's bare off
    assert task_regression_enabled("on", "rest", ev) is True
    assert task_regression_enabled(True, "rest", ev) is True
    with pytest.raises(InputError, match="task_regression is on"):
        task_regression_enabled("on", "oneback", tmp_path / "missing_events.tsv")
    with pytest.raises(ConfigError, match="Use auto, on or off"):
        task_regression_enabled("yes", "oneback", ev)


def test_find_events_file(tmp_path):
    func = tmp_path / "sub-01" / "ses-a" / "func"
    func.mkdir(parents=True)
    ents = {"subject": "01", "session": "a", "task": "nback", "run": "2"}
    assert find_events_file(tmp_path, ents) is None
    assert find_events_file(None, ents) is None
    top = _write(tmp_path / "task-nback_events.tsv", "onset\tduration\n1\t1\n")
    assert find_events_file(tmp_path, ents) == top  # inherited from the top level
    own = _write(func / "sub-01_ses-a_task-nback_run-2_events.tsv", "onset\tduration\n1\t1\n")
    assert find_events_file(tmp_path, ents) == own
    assert find_events_file(REPO / "data_real", {"subject": "02", "task": "oneback",
                                                 "run": "1"}) == REAL_EVENTS
