"""MNI152NLin6Asym input end to end, with laterality and orientation canaries.

The tree is the simulated sample participant sub-01 (120 volumes) moved into MNI152NLin6Asym
through the shipped template transform (:mod:`tmstarget.simulate_nlin6`), plus sub-02: the same
images re-stored LAS (BOLD) and LPS (T1w). Oracle, independent of the pipeline's space code:
the planted 2009c coordinate moved by the shipped transform (``convert_points``), and the
simulator's own T1w truth (its rigid map, not the fMRIPrep transform files).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tmstarget.simulate import DEFAULT_SUBJECTS
from tmstarget.spaces import NLIN6, NLIN2009C, convert_points

REPO = Path(__file__).resolve().parents[1]
#: Primary (cluster) target vs the planted target moved into NLin6, mm (measured 1.1 mm).
PRIMARY_TOL_MM = 3.0
#: Every method (classic picks a single voxel: measured 5.3 mm), mm.
ANY_TOL_MM = 6.0
pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def nlin6_run(tmp_path_factory):
    from tmstarget.simulate_nlin6 import make_dataset_nlin6, restored_copy

    base = tmp_path_factory.mktemp("nlin6")
    tree = base / "fmriprep"
    make_dataset_nlin6(tree, subjects=DEFAULT_SUBJECTS[:1], n_volumes=120)
    restored_copy(tree, "01", "02", bold_orientation="LAS", anat_orientation="LPS")
    cfg = base / "config.yaml"
    cfg.write_text(f"space: {NLIN6}\nreproducibility: {{enabled: false}}\n")
    out = base / "out"
    res = subprocess.run([sys.executable, "-m", "tmstarget.cli", str(tree), str(out),
                          "participant", "--cores", "2", "--configfile", str(cfg)],
                         capture_output=True, text=True, cwd=REPO)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    return tree, out


def test_outputs_named_and_labelled_with_the_data_space(nlin6_run):
    _, out = nlin6_run
    names = [p.name for p in out.rglob("*") if p.is_file() and "work" not in p.parts]
    assert any(f"space-{NLIN6}_desc-target_coords.json" in n for n in names)
    assert not any(f"space-{NLIN2009C}" in n for n in names), names
    t = pd.read_csv(out / "targets.tsv", sep="\t", keep_default_na=False)
    assert set(t.space) == {NLIN6}
    for p in out.glob(f"sub-*/func/*space-{NLIN6}_desc-target_coords.json"):
        tj = json.loads(p.read_text())
        assert tj["space"] == NLIN6
        assert {v["space"] for v in tj["targets"].values()} == {NLIN6}
    for p in out.glob("sub-*/anat/*space-T1w_desc-target_coords.json"):
        nj = json.loads(p.read_text())
        assert {v["space_mni"] for v in nj["targets"].values()} == {NLIN6}


def test_planted_target_recovered_left_in_mni_and_t1w(nlin6_run):
    tree, out = nlin6_run
    spec = DEFAULT_SUBJECTS[0]
    oracle = convert_points([spec.target_mm], NLIN2009C, NLIN6)[0]
    t1_truth = (spec.t1w_from_mni @ np.append(spec.target_mm, 1.0))[:3]
    t = pd.read_csv(out / "targets.tsv", sep="\t", keep_default_na=False)
    for _, r in t.iterrows():
        d = float(np.linalg.norm(np.array([r.x, r.y, r.z]) - oracle))
        assert r.x < 0, (r.participant_id, r.method)
        assert d <= (PRIMARY_TOL_MM if r.method == "cluster" else ANY_TOL_MM), (r.method, d)
    for sub in ("sub-01", "sub-02"):
        nj = json.loads(next(out.glob(f"{sub}/anat/*space-T1w_desc-target_coords.json"))
                        .read_text())
        prim = nj["targets"][nj["primary_method"]]
        t1 = np.asarray(prim["t1w_mm"])
        mni = np.asarray(prim["mni_mm"])
        assert mni[0] < 0
        # the T1w point must be the simulator's own rigid map of the MNI target (oracle)
        expect = (spec.t1w_from_mni @ np.append(convert_points([mni], NLIN6, NLIN2009C)[0],
                                                1.0))[:3]
        assert np.linalg.norm(t1 - expect) <= 1.0, (sub, t1, expect)
        assert t1[0] < 0, (sub, t1)
        assert np.linalg.norm(t1 - t1_truth) <= PRIMARY_TOL_MM + 0.5


def test_stored_orientation_does_not_move_the_target(nlin6_run):
    _, out = nlin6_run
    t = pd.read_csv(out / "targets.tsv", sep="\t", keep_default_na=False)
    a = t[t.participant_id == "sub-01"].set_index("method")[["x", "y", "z", "r"]]
    b = t[t.participant_id == "sub-02"].set_index("method")[["x", "y", "z", "r"]]
    assert len(a) and np.allclose(a.sort_index().to_numpy(), b.sort_index().to_numpy(),
                                  atol=1e-3)
    t1 = [json.loads(next(out.glob(f"{s}/anat/*space-T1w_desc-target_coords.json"))
                     .read_text()) for s in ("sub-01", "sub-02")]
    for m in t1[0]["targets"]:
        assert np.allclose(t1[0]["targets"][m]["t1w_mm"], t1[1]["targets"][m]["t1w_mm"],
                           atol=1e-2), m


def test_default_space_refuses_an_nlin6_only_tree_with_a_hint(nlin6_run, tmp_path):
    from tmstarget.plan import build_plan

    tree, _ = nlin6_run
    cfg = {"fmriprep_dir": str(tree), "output_dir": str(tmp_path / "o"), "task": "rest",
           "space": NLIN2009C, "res": None, "native": {"enabled": True}}
    plan = build_plan(cfg)
    assert not plan.runs
    why = " ".join(s.reason for s in plan.skipped)
    assert f"found BOLD only in space {NLIN6}" in why and "set config space" in why
    plan6 = build_plan({**cfg, "space": NLIN6})
    assert len(plan6.runs) == 2 and len(plan6.anat) == 2
    assert all(f"to-{NLIN6}" in a.xfm_mni_to_t1w_points for a in plan6.anat.values())


def test_missing_nlin6_transform_is_named(nlin6_run, tmp_path):
    import shutil

    from tmstarget.plan import build_plan

    tree, _ = nlin6_run
    copy = tmp_path / "t"
    shutil.copytree(tree / "sub-01", copy / "sub-01")
    shutil.copy(tree / "dataset_description.json", copy)
    (copy / "sub-01" / "anat" / f"sub-01_from-T1w_to-{NLIN6}_mode-image_xfm.h5").unlink()
    plan = build_plan({"fmriprep_dir": str(copy), "output_dir": str(tmp_path / "o"),
                       "task": "rest", "space": NLIN6, "res": None,
                       "native": {"enabled": True}})
    assert len(plan.runs) == 1 and not plan.anat
    assert f"_from-T1w_to-{NLIN6}_mode-image_xfm.h5" in plan.native_skipped[0].reason


def test_transform_of_the_other_template_is_refused(tmp_path):
    from tmstarget.errors import InputError
    from tmstarget.native import _check_transform_space

    bad = tmp_path / f"sub-01_from-T1w_to-{NLIN2009C}_mode-image_xfm.h5"
    with pytest.raises(InputError, match=f"not from-T1w_to-{NLIN6}"):
        _check_transform_space(bad, f"from-T1w_to-{NLIN6}", NLIN6)
    _check_transform_space(tmp_path / f"sub-01_from-T1w_to-{NLIN6}_mode-image_xfm.h5",
                           f"from-T1w_to-{NLIN6}", NLIN6)


def test_template_grey_matter_moved_into_nlin6():
    from tmstarget.greymatter import grey_matter_mask
    from tmstarget.simulate_nlin6 import nlin6_grid

    shape, aff = nlin6_grid(4.0)
    m6, d6 = grey_matter_mask(shape, aff, None, 0.3, data_space=NLIN6)
    m9, d9 = grey_matter_mask(shape, aff, None, 0.3, data_space=NLIN2009C)
    assert "moved MNI152NLin2009cAsym -> MNI152NLin6Asym" in d6 and "moved" not in d9
    assert m6.sum() > 1000 and (m6 != m9).any()
