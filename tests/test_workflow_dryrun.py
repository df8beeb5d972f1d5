"""Snakemake dry runs of multi-participant, multi-session, multi-run trees, and config checks."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import tiny_file

REPO = Path(__file__).resolve().parents[1]

FILES = (
    "{p}_space-MNI152NLin2009cAsym_desc-preproc_bold.nii.gz",
    "{p}_space-MNI152NLin2009cAsym_desc-preproc_bold.json",
    "{p}_space-MNI152NLin2009cAsym_desc-brain_mask.nii.gz",
    "{p}_desc-confounds_timeseries.tsv",
    "{p}_desc-confounds_timeseries.json",
)


def make_tree(root: Path, layout: dict[str, dict[str | None, list[str | None]]],
              skip: tuple[str, ...] = ()) -> Path:
    """Minimal fMRIPrep-like tree (headers only): {sub: {ses or None: [run or None, ...]}}."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(json.dumps(
        {"Name": "dry", "BIDSVersion": "1.9.0", "DatasetType": "derivative",
         "GeneratedBy": [{"Name": "fMRIPrep"}]}))
    for sub, sessions in layout.items():
        for ses, runs in sessions.items():
            d = root / f"sub-{sub}" / (f"ses-{ses}" if ses else "") / "func"
            d.mkdir(parents=True, exist_ok=True)
            for run in runs:
                p = f"sub-{sub}" + (f"_ses-{ses}" if ses else "") + "_task-rest" + (
                    f"_run-{run}" if run else "")
                for f in FILES:
                    name = f.format(p=p)
                    if not any(s in name for s in skip):
                        tiny_file(d / name)
    return root


def dry_run(src: Path, out: Path, extra_cfg: dict | None = None, *args: str):
    cfg = {"fmriprep_dir": str(src), "output_dir": str(out), **(extra_cfg or {})}
    work = src.parent  # never inside the input tree
    cfgfile = work / f"{out.name}_cfg.yaml"
    cfgfile.write_text(yaml.safe_dump(cfg))
    return subprocess.run(
        [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "-n",
         "--cores", "1", "--configfile", str(cfgfile), "--directory", str(work), *args],
        capture_output=True, text=True, cwd=work)


def job_counts(stdout: str) -> dict[str, int]:
    counts = {}
    for rule in ("denoise_run", "seed_map", "target", "reproducibility", "aggregate", "native",
                 "report", "cohort_report"):
        m = re.search(rf"^\s*{rule}\s+(\d+)\s*$", stdout, re.M)
        counts[rule] = int(m.group(1)) if m else 0
    return counts


def test_dry_run_sessions_and_runs(tmp_path):
    src = make_tree(tmp_path / "fmriprep", {
        "01": {None: [None]},
        "02": {None: ["1", "2"]},
        "03": {"1": [None], "2": ["01", "02"]},
    })
    res = dry_run(src, tmp_path / "out")
    assert res.returncode == 0, res.stderr
    # 1 + 2 + 1 + 2 runs; units: 01, 02, 03/ses-1, 03/ses-2
    assert job_counts(res.stdout) == {"denoise_run": 6, "seed_map": 4, "target": 4,
                                      "reproducibility": 4, "aggregate": 1, "native": 0,
                                      "report": 4, "cohort_report": 1}
    assert "sub-03/ses-2/func/sub-03_ses-2_task-rest_space-MNI152NLin2009cAsym_desc-target_coords.json" in res.stdout
    assert "run-02" in res.stdout  # zero padding kept
    assert "sub-03/ses-2/sub-03_ses-2_report.html" in res.stdout  # one report per unit
    assert not (tmp_path / "out" / "targets.tsv").exists()


def test_dry_run_participant_label_and_exclude(tmp_path):
    src = make_tree(tmp_path / "fmriprep", {"01": {None: [None]}, "02": {None: [None]},
                                             "03": {None: [None]}})
    res = dry_run(src, tmp_path / "out", {"participant_label": ["sub-01", "02"],
                                          "exclude_participants": ["02"]})
    assert res.returncode == 0, res.stderr
    assert job_counts(res.stdout)["target"] == 1
    assert "sub-02" not in res.stdout.split("Job stats")[1] if "Job stats" in res.stdout else True


def test_incomplete_participant_is_reported_not_silently_skipped(tmp_path):
    src = make_tree(tmp_path / "fmriprep", {"01": {None: [None]}, "02": {None: [None]}})
    for f in (src / "sub-02" / "func").glob("*confounds_timeseries.tsv"):
        f.unlink()
    res = dry_run(src, tmp_path / "out")
    assert res.returncode == 0, res.stderr
    assert re.search(r"skipped sub-02.*confounds.*missing", res.stderr)
    assert job_counts(res.stdout)["target"] == 1


def test_unknown_participant_is_an_error(tmp_path):
    src = make_tree(tmp_path / "fmriprep", {"01": {None: [None]}})
    res = dry_run(src, tmp_path / "out", {"participant_label": ["07"]})
    assert res.returncode != 0
    assert "sub-07 not found" in res.stdout + res.stderr


def test_output_inside_input_is_refused(tmp_path):
    src = make_tree(tmp_path / "fmriprep", {"01": {None: [None]}})
    res = dry_run(src, src / "derivatives" / "tms")
    assert res.returncode != 0
    assert "inside the input dataset" in res.stdout + res.stderr


@pytest.mark.parametrize("bad", [{"denoise": {"stratgy": "fox2012"}}, {"tagret": {}},
                                 {"denoise": {"strategy": "nope"}}])
def test_unknown_or_mistyped_config_key_is_an_error(tmp_path, bad):
    src = make_tree(tmp_path / "fmriprep", {"01": {None: [None]}})
    res = dry_run(src, tmp_path / "out", bad)
    assert res.returncode != 0
    text = res.stdout + res.stderr
    errors = [ln for ln in text.splitlines() if ln.startswith("tmstarget ERROR:")]
    assert len(errors) == 1, text  # one line per problem, not a jsonschema dump
    if "stratgy" in bad.get("denoise", {}):
        assert "'denoise.stratgy' is not a known key" in errors[0]
        assert "did you mean 'denoise.strategy'" in errors[0]
    elif "tagret" in bad:
        assert "'tagret'" in errors[0] and "did you mean 'target'" in errors[0]
    else:
        assert "denoise.strategy" in errors[0] and "nope" in errors[0], errors[0]


def test_every_schema_key_has_description_and_default():
    schema = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())
    cfg = yaml.safe_load((REPO / "config/config.yaml").read_text())

    def walk(node, path):
        assert node.get("additionalProperties") is False or path == ("search", "sites"), path
        for k, v in node.get("properties", {}).items():
            assert v.get("description"), f"{'.'.join(path + (k,))} has no description"
            assert "default" in v, f"{'.'.join(path + (k,))} has no default"
            if v.get("type") == "object" and "properties" in v:
                walk(v, path + (k,))

    walk(schema, ())
    # the shipped config uses only schema keys
    for k, v in cfg.items():
        assert k in schema["properties"], k
        if isinstance(v, dict):
            for kk in v:
                assert kk in schema["properties"][k]["properties"], (k, kk)


ANAT = ("{p}_desc-preproc_T1w.nii.gz", "{p}_desc-brain_mask.nii.gz",
        "{p}_from-T1w_to-MNI152NLin2009cAsym_mode-image_xfm.h5",
        "{p}_from-MNI152NLin2009cAsym_to-T1w_mode-image_xfm.h5")


def test_dry_run_native_step_per_unit_with_anatomy(tmp_path):
    src = make_tree(tmp_path / "fmriprep", {
        "01": {None: [None]},
        "02": {None: ["1", "2"]},
        "03": {"1": [None], "2": [None]},
    })
    for sub in ("01", "03"):  # sub-02 has no anatomy: native skipped, MNI outputs still built
        d = src / f"sub-{sub}" / "anat"
        d.mkdir(parents=True)
        for f in ANAT:
            tiny_file(d / f.format(p=f"sub-{sub}"))
    res = dry_run(src, tmp_path / "out")
    assert res.returncode == 0, res.stderr
    counts = job_counts(res.stdout)
    assert counts["native"] == 3 and counts["target"] == 4  # 01, 03/ses-1, 03/ses-2
    assert ("sub-03/ses-2/anat/sub-03_ses-2_task-rest_space-T1w_desc-target_coords.json"
            in res.stdout)
    assert "sub-01/anat/sub-01_task-rest_space-T1w_desc-target_brainsight.txt" in res.stdout
    assert re.search(r"sub-02: native/T1w export skipped", res.stderr)
    off = dry_run(src, tmp_path / "out2", {"native": {"enabled": False}})
    assert off.returncode == 0, off.stderr
    assert job_counts(off.stdout)["native"] == 0


def test_dry_run_scalp_rules_outputs_and_hotspot_units(tmp_path):
    """Scalp-rule files are declared for every unit with anatomy; the 5 cm rule's exports only
    for units with a motor hotspot (rule native_hotspot)."""
    src = make_tree(tmp_path / "fmriprep", {"01": {None: [None]}, "03": {"1": [None],
                                                                          "2": [None]}})
    for sub in ("01", "03"):
        d = src / f"sub-{sub}" / "anat"
        d.mkdir(parents=True)
        for f in ANAT:
            tiny_file(d / f.format(p=f"sub-{sub}"))
    cfg = {"native": {"scalp_rules": {"hotspot_t1w_mm": {"sub-03_ses-2": [-35.0, -18.0, 70.0]}}}}
    res = dry_run(src, tmp_path / "out", cfg)
    assert res.returncode == 0, res.stderr
    assert len(re.findall(r"^\s*rule native_hotspot:", res.stdout, re.MULTILINE)) == 1
    assert len(re.findall(r"^\s*rule native:", res.stdout, re.MULTILINE)) == 2
    for stem in ("sub-01/anat/sub-01_task-rest", "sub-03/ses-1/anat/sub-03_ses-1_task-rest",
                 "sub-03/ses-2/anat/sub-03_ses-2_task-rest"):
        for suffix in ("desc-scalpBeamF3_brainsight.txt", "desc-scalpEEGF3_visor2.mrk",
                       "desc-scalp_coords.tsv", "desc-head_mask.nii.gz",
                       "desc-scalpmodel_qc.png", "desc-landmarks_qc.png"):
            assert f"{stem}_space-T1w_{suffix}" in res.stdout, (stem, suffix)
    assert "sub-03_ses-2_task-rest_space-T1w_desc-scalp5cm_slicer.mrk.json" in res.stdout
    assert "sub-01_task-rest_space-T1w_desc-scalp5cm" not in res.stdout
    off = dry_run(src, tmp_path / "out2", {"native": {"scalp_rules": {"enabled": False}}})
    assert off.returncode == 0, off.stderr
    assert "desc-scalp" not in off.stdout and "desc-target_brainsight.txt" in off.stdout
