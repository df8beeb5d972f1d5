"""The fast file index of discovery (tmstarget.discover._fast_index) gives pybids' answers.

Every discovery in the tests also runs pybids and compares (TMSTARGET_CHECK_FAST_INDEX=1,
tests/conftest.py); these tests add trees made to catch the differences: entities in odd
places, in the root path, excluded folders, other spaces, and what the fast index leaves to
pybids (symbolic links, odd names).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from conftest import tiny_file

from tmstarget import discover as disc


def _tree(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / "dataset_description.json").write_text(json.dumps(
        {"Name": "x", "BIDSVersion": "1.9.0", "DatasetType": "derivative",
         "GeneratedBy": [{"Name": "fMRIPrep"}]}))
    sp = "space-MNI152NLin2009cAsym"
    names = {
        "sub-01/func": ["sub-01_task-rest_{sp}_desc-preproc_bold.nii.gz",
                        "sub-01_task-rest_{sp}_desc-preproc_bold.json",
                        "sub-01_task-rest_{sp}_desc-brain_mask.nii.gz",
                        "sub-01_task-rest_desc-confounds_timeseries.tsv",
                        "sub-01_task-rest_desc-confounds_timeseries.json",
                        "sub-01_task-rest_space-T1w_desc-preproc_bold.nii.gz",
                        "sub-01_task-rest_{sp}_boldref.nii.gz",
                        "sub-01_task-rest_run-2_{sp}_res-2_desc-preproc_bold.nii",
                        "sub-01_task-rest_run-2_{sp}_res-2_desc-brain_mask.nii",
                        "sub-01_task-rest_run-2_desc-confounds_timeseries.tsv",
                        "sub-01_task-rest_run-2_desc-confounds_timeseries.json",
                        "sub-01_task-rest_run-2_{sp}_res-2_desc-preproc_bold.json",
                        "sub-01_task-rest_xdesc-odd_{sp}_desc-preproc_bold.nii.gz",
                        "sub-01_task-other_{sp}_desc-preproc_bold.nii.gz",
                        "sub-02_task-rest_{sp}_desc-preproc_bold.nii.gz",
                        "task-rest_{sp}_desc-preproc_bold.nii.gz",
                        "sub-01_task-rest_dir-AP_foo-1_{sp}_desc-preproc_bold.nii.gz",
                        "sub-01_task-rest_{sp}_desc-preproc_bold.nii.gz.bak",
                        ".hidden_task-rest_{sp}_desc-preproc_bold.nii.gz"],
        "sub-03/ses-1/func": ["sub-03_ses-1_task-rest_{sp}_desc-preproc_bold.nii.gz",
                              "sub-03_ses-1_task-rest_{sp}_desc-brain_mask.nii.gz",
                              "sub-03_ses-1_task-rest_desc-confounds_timeseries.tsv",
                              "sub-03_ses-1_task-rest_desc-confounds_timeseries.json",
                              "sub-03_ses-1_task-rest_{sp}_desc-preproc_bold.json"],
        "sub-03/ses-2/func": ["sub-03_ses-2_task-rest_{sp}_desc-preproc_bold.nii.gz"],
        "sub-04/anat": ["sub-04_desc-preproc_T1w.nii.gz"],
        "sub-05/figures": ["sub-05_task-rest_{sp}_desc-preproc_bold.nii.gz"],
        "sub-05/ses-1/funcx": ["sub-05_task-rest_{sp}_desc-preproc_bold.nii.gz"],
        "codex/func": ["sub-06_task-rest_{sp}_desc-preproc_bold.nii.gz"],
        "other/sub-07/func": ["sub-07_task-rest_{sp}_desc-preproc_bold.nii.gz"],
        ".git/sub-08/func": ["sub-08_task-rest_{sp}_desc-preproc_bold.nii.gz"],
        "sub-09/func/deeper": ["sub-09_task-rest_{sp}_desc-preproc_bold.nii.gz"],
    }
    for folder, files in names.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        for n in files:
            tiny_file(root / folder / n.format(sp=sp))
    return root


QUERIES = [dict(datatype="func"), dict(task="rest", datatype="func", suffix="bold",
                                       desc="preproc", space="MNI152NLin2009cAsym",
                                       extension=[".nii.gz", ".nii"]),
           dict(task="rest", subject=["01", "03"], datatype="func", suffix="mask",
                desc="brain", space="MNI152NLin2009cAsym", extension=[".nii.gz", ".nii"]),
           dict(task="rest", subject=[], datatype="func", suffix="timeseries",
                desc="confounds", extension=".json"),
           dict(subject="03", suffix="timeseries", extension=".tsv")]


def _both(root: Path) -> tuple[list[list[str]], list[list[str]]]:
    from bids import BIDSLayout, BIDSLayoutIndexer

    space = "MNI152NLin2009cAsym"
    ignore = [*disc._INDEX_IGNORE, re.compile(rf"_(space-(?!{re.escape(space)}_)[^_/]+_[^/]*"
                                              r"|boldref\.[^/]*)$")]
    index = disc._fast_index(root, ignore)
    assert index is not None
    layout = BIDSLayout(root, validate=False, config=["bids", "derivatives"],
                        indexer=BIDSLayoutIndexer(validate=False, index_metadata=False,
                                                  ignore=ignore))
    fast = [disc._query(index, **q) for q in QUERIES]
    slow = [sorted(f.path for f in layout.get(**q)) for q in QUERIES]
    return fast, slow


@pytest.mark.parametrize("where", ["plain", "sub-99/func/desc-x_task-y/_space-z"])
def test_fast_index_answers_as_pybids(tmp_path, where):
    """Same files for every query discovery makes, also when the root path itself holds
    entity-like folders (pybids searches its patterns in the absolute path)."""
    root = _tree(tmp_path / where / "fmriprep")
    fast, slow = _both(root)
    assert fast == slow
    assert any(fast)  # the trees hold matches


def test_discover_with_and_without_pybids_agree(tmp_path, monkeypatch):
    root = _tree(tmp_path / "fmriprep")
    monkeypatch.setenv(disc.CHECK_FAST_INDEX_ENV, "0")
    fast = disc.discover(root)
    monkeypatch.setattr(disc, "_fast_index", lambda *a: None)  # pybids only
    assert disc.discover(root) == fast
    assert fast[0], fast  # some runs


def test_what_the_fast_index_does_not_model_is_left_to_pybids(tmp_path):
    root = _tree(tmp_path / "fmriprep")
    ignore = list(disc._INDEX_IGNORE)
    assert disc._fast_index(root, ignore) is not None
    link = root / "sub-01" / "func" / "sub-01_task-rest_acq-l_space-MNI152NLin2009cAsym_desc-preproc_bold.nii.gz"
    os.symlink(root / "sub-01" / "func" / "sub-01_task-rest_space-MNI152NLin2009cAsym_desc-brain_mask.nii.gz", link)
    assert disc._fast_index(root, ignore) is None
    link.unlink()
    odd = root / "sub-01" / "func" / "sub-01_task-rest_acq-a b_bold.nii.gz"
    tiny_file(odd)
    assert disc._fast_index(root, ignore) is None
    odd.unlink()
    (root / "derivatives").mkdir()
    assert disc._fast_index(root, ignore) is None


def test_pybids_constants_are_the_ones_modelled():
    from bids.layout import validation

    assert [p.pattern for p in disc._PYBIDS_ALWAYS_IGNORE] == [
        p.pattern for p in validation.ALWAYS_IGNORE]
    assert disc._pybids_patterns() is not None
