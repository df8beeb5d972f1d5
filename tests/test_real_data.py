"""Real vs simulated input, the REAL DATA caveat, and the only-task rule (fast unit tests).

The end-to-end run of the real participant is ``tests/test_e2e_real.py``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tmstarget.preproc import auto_task, raw_bids_tasks
from tmstarget.report import data_origin, real_data_caveat

REPO = Path(__file__).resolve().parents[1]


def _desc(root: Path, **kw) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(json.dumps(
        {"Name": "x", "BIDSVersion": "1.9.0", **kw}))
    return root


def test_samples_are_simulated_and_the_real_participant_is_real(tmp_path):
    for sample in ("data_sample", "data_sample_raw"):
        o = data_origin({"fmriprep_dir": str(REPO / sample)})
        assert o["simulated"] is True and o["label"] == "SIMULATED", sample
    o = data_origin({"fmriprep_dir": str(REPO / "data_real")})
    assert o["simulated"] is False and o["label"] == "REAL DATA"
    assert "studyforrest" in o["dataset_name"]
    # raw input: the built-in derivatives repeat the raw name; the raw dataset is read too
    derived = _desc(tmp_path / "builtin", Name="tmstarget built-in preprocessing")
    assert data_origin({"fmriprep_dir": str(derived),
                        "bids_dir": str(REPO / "data_sample_raw")})["simulated"] is True
    assert data_origin({"fmriprep_dir": str(derived),
                        "bids_dir": str(REPO / "data_real")})["label"] == "REAL DATA"
    # a dataset that says nothing is treated as real
    assert data_origin({"fmriprep_dir": str(_desc(tmp_path / "plain"))})["simulated"] is False
    assert data_origin({})["label"] == "REAL DATA"


def test_real_data_caveat_says_task_and_minutes():
    short_task = real_data_caveat("oneback", 5.1, 1)
    assert short_task.startswith("REAL DATA")
    assert "TASK fMRI ('oneback', not rest)" in short_task and "5.1 min" in short_task
    assert "far too little data for a clinical target" in short_task
    long_rest = real_data_caveat("rest", 30.0, 3)
    assert "resting-state" in long_rest and "far too little" not in long_rest
    assert "far too little" in real_data_caveat("rest", 6.0, 1)


def test_only_task_is_used_when_there_is_no_rest(tmp_path):
    assert raw_bids_tasks(REPO / "data_real") == ["oneback"]
    assert auto_task(REPO / "data_real", "rest", task_was_set=False) == "oneback"
    assert auto_task(REPO / "data_real", "rest", task_was_set=True) is None  # user's choice
    assert auto_task(REPO / "data_sample_raw", "rest", task_was_set=False) is None  # has rest
    two = tmp_path / "two"
    for task in ("nback", "faces"):
        f = two / "sub-01" / "func"
        f.mkdir(parents=True, exist_ok=True)
        (f / f"sub-01_task-{task}_bold.nii.gz").write_bytes(b"")
    assert auto_task(two, "rest", task_was_set=False) is None  # ambiguous: say what is missing


def test_cli_announces_the_task_it_uses(tmp_path, capsys):
    from tmstarget.cli import main

    bids = tmp_path / "real"
    shutil.copytree(REPO / "data_real", bids)
    rc = main([str(bids), str(tmp_path / "out"), "participant", "-n"])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "THIS IS TASK fMRI, NOT REST" in err and "task-oneback" in err
    cfg = (tmp_path / "out" / "work" / "tmstarget_cli_config.yaml").read_text()
    assert "task: oneback" in cfg
    # set by the user: no override, no note
    own = tmp_path / "own.yaml"
    own.write_text("task: rest\n")
    main([str(bids), str(tmp_path / "out2"), "participant", "-n", "--configfile", str(own)])
    assert "THIS IS TASK fMRI" not in capsys.readouterr().err
