"""Bad-input catalogue: one clear error naming the file and the problem, nothing partial left.

Step-level cases run the real workflow step (``tmstarget.pipeline.denoise_step`` through
``tmstarget.smk.run_step``, exactly as Snakemake calls it) on a small seeded run with one thing
broken; workflow-level cases run the ``tmstarget`` command on a one-subject copy of the sample.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import nibabel as nb
import numpy as np
import pandas as pd
import pytest
from conftest import copy_sample_participant
from test_denoise import make_run

from tmstarget import io as tio
from tmstarget.pipeline import denoise_step
from tmstarget.smk import run_step

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data_sample"
CFG = {"denoise": {"strategy": "fox2012", "fd_threshold": 0.5, "std_dvars_threshold": None,
                   "min_segment": 5, "min_volumes": 20, "smoothing_fwhm": None,
                   "high_pass": None, "low_pass": None}}


# --------------------------------------------------------------------------- helpers
def _img(p: Path) -> tuple[np.ndarray, nb.Nifti1Image]:
    img = nb.load(p)
    return np.asarray(img.dataobj).copy(), img


def _save(p: Path, data: np.ndarray, like: nb.Nifti1Image, affine=None) -> None:
    out = nb.Nifti1Image(data, like.affine if affine is None else affine, like.header)
    nb.save(out, p)


def set_3d(p):
    d, img = _img(p["bold"])
    nb.save(nb.Nifti1Image(d[..., 0], img.affine), p["bold"])


def set_nan(p):
    d, img = _img(p["bold"])
    d[5, 6, 5, 3] = np.nan
    _save(p["bold"], d, img)


def set_inf(p):
    d, img = _img(p["bold"])
    d[5, 6, 5, 3] = np.inf
    _save(p["bold"], d, img)


def set_constant(p):
    d, img = _img(p["bold"])
    d[:6] = 700.0
    _save(p["bold"], d, img)


def set_tr_missing(p):
    p["bold_json"].write_text(json.dumps({"TaskName": "rest"}))


def set_tr_disagree(p):
    p["bold_json"].write_text(json.dumps({"RepetitionTime": 3.0}))


def set_tr_ms(p):
    p["bold_json"].write_text(json.dumps({"RepetitionTime": 2000}))


def set_sidecar_broken(p):
    p["bold_json"].write_text("{RepetitionTime: 2")


def _conf(p):
    return pd.read_csv(p["confounds"], sep="\t")


def _write_conf(p, df):
    df.to_csv(p["confounds"], sep="\t", index=False, na_rep="n/a")


def set_conf_fewer_rows(p):
    _write_conf(p, _conf(p).iloc[:-5])


def set_conf_more_rows(p):
    df = _conf(p)
    _write_conf(p, pd.concat([df, df.iloc[-3:]]))


def set_conf_missing_column(p):
    _write_conf(p, _conf(p).drop(columns=["white_matter"]))


def set_conf_non_numeric(p):
    df = _conf(p)
    df["trans_x"] = df["trans_x"].astype(str)
    df.loc[10, "trans_x"] = "0.1mm"
    _write_conf(p, df)


def set_conf_nan_value(p):
    df = _conf(p)
    df.loc[10, "global_signal"] = np.nan
    _write_conf(p, df)


def set_conf_missing_file(p):
    p["confounds"].unlink()


def set_mask_other_grid(p):
    d, img = _img(p["mask"])
    nb.save(nb.Nifti1Image(d[1:], img.affine), p["mask"])


def set_mask_shifted(p):
    d, img = _img(p["mask"])
    aff = img.affine.copy()
    aff[1, 3] += 8
    m = nb.Nifti1Image(d, aff)
    m.set_qform(aff, 4)
    m.set_sform(aff, 4)
    nb.save(m, p["mask"])


def set_mask_empty(p):
    d, img = _img(p["mask"])
    _save(p["mask"], np.zeros_like(d), img)


def set_qform_sform(p):
    img = nb.load(p["bold"])
    q = img.affine.copy()
    q[0, 0] = -q[0, 0]
    img.set_qform(q, 4)
    nb.save(img, p["bold"])


def set_truncated(p):
    raw = p["bold"].read_bytes()
    p["bold"].write_bytes(raw[: len(raw) * 2 // 3])


def set_not_nifti(p):
    p["bold"].write_bytes(b"this is not an image")


def set_all_censored(p):
    df = _conf(p)
    df["framewise_displacement"] = 5.0
    _write_conf(p, df)


def set_too_short(p):
    d, img = _img(p["bold"])
    _save(p["bold"], d[..., :8], img)
    _write_conf(p, _conf(p).iloc[:8])


STEP_CASES = {
    "3d_image": (set_3d, ["3D", "must be 4D"]),
    "nan_voxels": (set_nan, ["NaN or infinite"]),
    "inf_voxels": (set_inf, ["NaN or infinite"]),
    "constant_voxels": (set_constant, ["constant signal"]),
    "tr_missing": (set_tr_missing, ["RepetitionTime is missing"]),
    "tr_disagrees": (set_tr_disagree, ["disagrees", "3 s"]),
    "tr_in_ms": (set_tr_ms, ["implausible", "seconds"]),
    "sidecar_not_json": (set_sidecar_broken, ["not valid JSON"]),
    "confounds_fewer_rows": (set_conf_fewer_rows, ["85 rows", "90 volumes"]),
    "confounds_more_rows": (set_conf_more_rows, ["93 rows", "90 volumes"]),
    "confounds_missing_column": (set_conf_missing_column, ["strategy 'fox2012'"]),
    "confounds_non_numeric": (set_conf_non_numeric, ["non-numeric", "trans_x"]),
    "confounds_nan_value": (set_conf_nan_value, ["missing or infinite", "global_signal"]),
    "confounds_missing_file": (set_conf_missing_file, ["confounds file does not exist"]),
    "mask_other_grid": (set_mask_other_grid, ["does not match the BOLD grid"]),
    "mask_shifted": (set_mask_shifted, ["voxel-to-world affines differ", "8 mm apart"]),
    "mask_empty": (set_mask_empty, ["brain mask is empty"]),
    "qform_not_sform": (set_qform_sform, ["qform and sform disagree"]),
    "truncated_gzip": (set_truncated, ["corrupt or truncated"]),
    "not_a_nifti": (set_not_nifti, ["cannot be read as NIfTI"]),
    "all_volumes_censored": (set_all_censored, ["every volume of this run is censored"]),
    "too_few_volumes": (set_too_short, ["only 8 volumes"]),
}
#: which file each case must name
NAMED = {"tr_missing": "bold_json", "tr_in_ms": "bold_json", "sidecar_not_json": "bold_json",
         "confounds_fewer_rows": "confounds", "confounds_more_rows": "confounds",
         "confounds_missing_column": "confounds", "confounds_non_numeric": "confounds",
         "confounds_nan_value": "confounds", "confounds_missing_file": "confounds",
         "mask_other_grid": "mask", "mask_shifted": "mask", "mask_empty": "mask"}


@pytest.mark.parametrize("case", sorted(STEP_CASES))
def test_step_bad_input(tmp_path, case, capsys):
    p = make_run(tmp_path / "in", np.random.default_rng(3))
    mutate, expected = STEP_CASES[case]
    mutate(p)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    log = tmp_path / "logs" / "x.log"
    smk = SimpleNamespace(log=[str(log)])
    run = {k: str(v) for k, v in p.items()}
    run["confounds_json"] = str(p["confounds"]).replace(".tsv", ".json")
    with pytest.raises(SystemExit) as ei:
        run_step(smk, denoise_step, run=run, cfg=CFG, out_npz=out_dir / "run_denoised.npz")
    assert ei.value.code == 1
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("tmstarget ERROR:")]
    assert len(lines) == 1, err
    for text in expected:
        assert text in lines[0], lines[0]
    assert Path(p[NAMED.get(case, "bold")]).name in lines[0]
    assert "What to do:" in lines[0]
    assert lines[0] in log.read_text()
    assert list(out_dir.iterdir()) == [], "partial output left behind"


def test_oblique_and_flipped_affines_work(tmp_path):
    """Not an error: an oblique, LPS-stored run is denoised (and keeps its world grid)."""
    rot = np.array([[0.9848, -0.1736, 0], [0.1736, 0.9848, 0], [0, 0, 1]])
    aff = np.eye(4)
    aff[:3, :3] = rot @ np.diag([-4.0, -4.0, 4.0])
    aff[:3, 3] = [20, 24, -18]
    p = make_run(tmp_path, np.random.default_rng(3), affine=aff)
    out = tmp_path / "ok.npz"
    run = {k: str(v) for k, v in p.items()}
    run["confounds_json"] = str(p["confounds"]).replace(".tsv", ".json")
    denoise_step(run, CFG, out)
    from tmstarget.denoise import load_denoised

    d = load_denoised(out)
    np.testing.assert_allclose(d.affine, aff)
    assert d.data.shape[1] > 500


def test_disk_full_leaves_nothing_and_says_so(tmp_path, monkeypatch, capsys):
    """A write that fails with ENOSPC: clear message, no partial or temporary file."""
    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tio.os, "fsync", full)
    target = tmp_path / "out" / "x.json"
    smk = SimpleNamespace(log=[str(tmp_path / "logs" / "x.log")])
    with pytest.raises(SystemExit):
        run_step(smk, tio.write_json, path=target, data={"a": 1})
    err = capsys.readouterr().err
    assert "disk (or your quota) is full" in err and "What to do" in err
    assert list((tmp_path / "out").iterdir()) == []


def test_read_only_output_folder_refused_before_anything_runs(tmp_path, monkeypatch, capsys):
    from tmstarget import cli

    src = tmp_path / "fmriprep"
    src.mkdir()

    def deny(*a, **k):
        raise PermissionError(errno.EACCES, "Permission denied")

    if os.geteuid() == 0:  # root ignores permission bits: simulate the refusal
        monkeypatch.setattr("tempfile.NamedTemporaryFile", deny)
    else:  # pragma: no cover - a real read-only folder
        (tmp_path / "ro").mkdir(mode=0o555)
    rc = cli.main([str(src), str(tmp_path / "ro"), "participant"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "the output folder cannot be written" in err and str(tmp_path / "ro") in err


# --------------------------------------------------------------------------- workflow level
def tmstarget(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tmstarget.cli", *args], capture_output=True,
                          text=True, cwd=REPO, timeout=600)


@pytest.fixture
def one_subject(tmp_path):
    src = copy_sample_participant(tmp_path / "fmriprep")
    cfg = tmp_path / "fast.yaml"
    cfg.write_text("reproducibility:\n  enabled: false\n")
    return src, cfg


def outputs(out: Path) -> list[str]:
    """Derivative files (not logs, work files or Snakemake's own bookkeeping)."""
    return sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()
                  and p.relative_to(out).parts[0] not in ("logs", "work", ".snakemake"))


def test_workflow_empty_dataset(tmp_path):
    src = tmp_path / "empty"
    src.mkdir()
    shutil.copy(SAMPLE / "dataset_description.json", src)
    res = tmstarget(str(src), str(tmp_path / "out"), "participant")
    assert res.returncode != 0
    assert f"tmstarget ERROR: {src}: no sub-* participant folders found" in res.stderr
    assert "Traceback" not in res.stderr and outputs(tmp_path / "out") == []


def test_workflow_unknown_participant(one_subject, tmp_path):
    src, _ = one_subject
    res = tmstarget(str(src), str(tmp_path / "out"), "participant", "--participant-label", "07")
    assert res.returncode != 0
    assert "participant(s) sub-07 not found (found: sub-01)" in res.stderr


def test_workflow_bold_not_in_mni(one_subject, tmp_path):
    src, _ = one_subject
    for f in (src / "sub-01" / "func").glob("*MNI152NLin2009cAsym*"):
        f.rename(f.with_name(f.name.replace("MNI152NLin2009cAsym", "MNI152NLin6Asym")))
    res = tmstarget(str(src), str(tmp_path / "out"), "participant")
    assert res.returncode != 0
    assert "found BOLD only in space MNI152NLin6Asym" in res.stderr
    assert "no usable run found" in res.stderr


def test_workflow_3d_bold_fails_clearly_without_partial_output(one_subject, tmp_path):
    src, cfg = one_subject
    bold = next((src / "sub-01" / "func").glob("*_desc-preproc_bold.nii.gz"))
    img = nb.load(bold)
    nb.save(nb.Nifti1Image(np.asarray(img.dataobj)[..., 0], img.affine, img.header), bold)
    out = tmp_path / "out"
    res = tmstarget(str(src), str(out), "participant", "--configfile", str(cfg))
    assert res.returncode != 0
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("tmstarget ERROR:")]
    assert lines and all(bold.name in ln and "must be 4D" in ln for ln in lines), res.stderr
    assert outputs(out) == []
    assert not list((out / "work").glob("*.npz"))


def test_workflow_too_few_volumes_after_scrubbing(one_subject, tmp_path):
    src, cfg = one_subject
    cfg.write_text(cfg.read_text() + "denoise:\n  min_volumes: 299\n")
    out = tmp_path / "out"
    res = tmstarget(str(src), str(out), "participant", "--configfile", str(cfg))
    assert res.returncode != 0
    assert "sub-01 has only 273 volumes left after scrubbing, fewer than the minimum of 299" \
        in res.stderr
    assert "sub-01_task-rest_space-MNI152NLin2009cAsym_desc-preproc_bold.nii.gz" in res.stderr
    assert outputs(out) == []


def _mask_like_template(path: Path, where) -> Path:
    tpl = nb.load(REPO / "src/tmstarget/data/tpl-MNI152NLin2009cAsym_res-02_desc-brain_mask.nii.gz")
    d = np.zeros(tpl.shape, np.uint8)
    d[where] = 1
    nb.save(nb.Nifti1Image(d, tpl.affine), path)
    return path


def test_workflow_seed_empty_after_resampling(one_subject, tmp_path):
    src, cfg = one_subject
    seed = tmp_path / "my_seed.nii.gz"
    aff = np.diag([2.0, 2, 2, 1])
    aff[:3, 3] = 500  # far outside the head
    nb.save(nb.Nifti1Image(np.ones((4, 4, 4), np.uint8), aff), seed)
    cfg.write_text(cfg.read_text() + f"seed:\n  kind: file\n  file: {seed}\n"
                   "  space: MNI152NLin2009cAsym\n")
    out = tmp_path / "out"
    res = tmstarget(str(src), str(out), "participant", "--configfile", str(cfg))
    assert res.returncode != 0
    assert f"tmstarget ERROR: {seed}: the seed has no voxel inside the brain mask" in res.stderr
    assert outputs(out) == []


def test_workflow_search_region_outside_brain(one_subject, tmp_path):
    src, cfg = one_subject
    region = _mask_like_template(tmp_path / "my_dlpfc.nii.gz", np.s_[:4, :4, :4])
    cfg.write_text(cfg.read_text() + f"search:\n  kind: file\n  file: {region}\n")
    out = tmp_path / "out"
    res = tmstarget(str(src), str(out), "participant", "--configfile", str(cfg))
    assert res.returncode != 0
    assert f"tmstarget ERROR: {region}: the search-region mask lies entirely outside the brain" \
        in res.stderr
    assert not any("desc-target_coords" in f for f in outputs(out))


def test_workflow_missing_seed_file_named(one_subject, tmp_path):
    src, cfg = one_subject
    cfg.write_text(cfg.read_text() + f"seed:\n  kind: file\n  file: {tmp_path}/nope.nii.gz\n")
    res = tmstarget(str(src), str(tmp_path / "out"), "participant", "--configfile", str(cfg))
    assert res.returncode != 0
    assert "nope.nii.gz" in res.stderr
