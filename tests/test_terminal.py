"""What a person reads on the terminal: config problems, refusals, errors once, plan, summary."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import yaml

from tmstarget.cli import main
from tmstarget.configcheck import config_problems, cross_key_errors
from tmstarget.terminal import LogFilter, closing_summary, plan_summary

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data_sample"


def _errors(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.startswith("tmstarget ERROR")]


# --------------------------------------------------------------------------- config problems
def test_misspelled_key_is_one_line_with_did_you_mean():
    lines = config_problems({"target": {"methds": ["classic"]}, "natve": {}})
    assert lines == [
        "config key 'target.methds' is not a known key; did you mean 'target.methods'?",
        "config key 'natve' is not a known key; did you mean 'native'?",
    ]


def test_bad_value_names_its_key_path():
    (line,) = config_problems({"native": {"entry": "nrmal"}})
    assert line.startswith("config key 'native.entry': ") and "'normal'" in line


def test_cross_key_rules():
    assert cross_key_errors({}) == []  # the defaults are consistent
    (line,) = cross_key_errors({"target": {"methods": ["classic", "cluster"]},
                                "native": {"method": "weighted"}})
    assert "native.method" in line and "target.methods" in line and "What to do" in line
    # the native step off: the export method does not matter
    assert cross_key_errors({"target": {"methods": ["classic"]},
                             "native": {"enabled": False, "method": "weighted"}}) == []
    (line,) = cross_key_errors({"target": {"methods": ["seedmap"],
                                           "seedmap": {"source": "file"}}})
    assert "target.seedmap.file" in line
    (line,) = cross_key_errors({"seed": {"kind": "file"}})
    assert "seed.file" in line
    (line,) = cross_key_errors({"seed": {"kind": "file", "file": "/no/such/seed.nii.gz"}})
    assert "/no/such/seed.nii.gz is not a file" in line


def test_cli_refuses_misspelled_key_before_writing_anything(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"target": {"methds": ["classic"]}}))
    out = tmp_path / "out"
    rc = main([str(SAMPLE), str(out), "participant", "--configfile", str(cfg)])
    err = capsys.readouterr().err
    assert rc == 2
    assert _errors(err) == ["tmstarget ERROR: config key 'target.methds' is not a known key; "
                            "did you mean 'target.methods'?"]
    assert len(err.splitlines()) <= 3 and not out.exists()


def test_cli_refuses_cross_key_error_before_writing_anything(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"target": {"methods": ["classic", "cluster"]},
                                   "native": {"method": "weighted"}}))
    out = tmp_path / "out"
    rc = main([str(SAMPLE), str(out), "participant", "--configfile", str(cfg)])
    (line,) = _errors(capsys.readouterr().err)
    assert rc == 2 and "native.method" in line and not out.exists()


def test_cli_refuses_bad_label_and_bad_path_before_writing_anything(tmp_path, capsys):
    out = tmp_path / "out"
    assert main([str(SAMPLE), str(out), "participant", "--participant-label", "09"]) == 2
    (line,) = _errors(capsys.readouterr().err)
    assert "sub-09 not found" in line and "--participant-label" in line
    assert main([str(tmp_path / "nope"), str(out), "participant"]) == 2
    (line,) = _errors(capsys.readouterr().err)
    assert "does not exist" in line
    assert not out.exists()


def test_snakemake_direct_gets_the_same_one_line(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"fmriprep_dir": str(SAMPLE), "output_dir": str(tmp_path / "o"),
                                   "target": {"methds": ["classic"]}}))
    res = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-n",
                          "--cores", "1", "--configfile", str(cfg), "--directory", str(tmp_path)],
                         check=False, capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode != 0
    assert _errors(res.stdout + res.stderr) == [
        "tmstarget ERROR: config key 'target.methds' is not a known key; did you mean "
        "'target.methods'?"]
    assert "Failed validating" not in res.stdout + res.stderr


# --------------------------------------------------------------------------- snakemake output
SNAKEMAKE_FAILURE = """\
Building DAG of jobs...
Job stats:
job            count
-----------  -------
denoise_run        2
target             1
all                1
total              4

rule denoise_run:
    input: a.nii.gz
    wildcards: runprefix=sub-01/ses-1/func/sub-01_ses-1_task-rest_run-1
    jobid: 1
rule denoise_run:
    wildcards: runprefix=sub-01/ses-1/func/sub-01_ses-1_task-rest_run-2
tmstarget ERROR: /d/sub-01_bold.nii.gz: the BOLD run must be 4D. What to do: give a 4D run.
Error in rule denoise_run:
    message: None
    jobid: 1
    input: a.nii.gz
    output: b.tsv
    log: /o/logs/denoise_run/sub-01.log (check log file(s) for error details)
    wildcards: runprefix=sub-01/ses-1/func/sub-01_ses-1_task-rest_run-1
RuleException:
tmstarget ERROR: /d/sub-01_bold.nii.gz: the BOLD run must be 4D. What to do: give a 4D run.
1 of 4 steps (25%) done
Exiting because a job execution failed. Look below for error messages
tmstarget ERROR: /d/sub-01_bold.nii.gz: the BOLD run must be 4D. What to do: give a 4D run.
Complete log(s): /o/.snakemake/log/x.snakemake.log
"""


def test_each_error_printed_once_and_failed_step_names_its_log():
    filt = LogFilter()
    shown = [s for line in SNAKEMAKE_FAILURE.splitlines() for s in filt.feed(line)]
    shown += filt.closing("/o/logs/tmstarget/run.log", 1)
    assert sum("must be 4D" in s for s in shown) == 1
    assert "1 of 4 steps (25%) done" in shown
    assert any(s.startswith("[tmstarget] step denoise_run (runprefix=sub-01/ses-1/func/")
               and s.endswith("its log: /o/logs/denoise_run/sub-01.log") for s in shown)
    assert shown[-1] == "[tmstarget] full Snakemake output: /o/logs/tmstarget/run.log"
    assert not any("jobid" in s or "input:" in s for s in shown)


def test_dry_run_plan_summary():
    filt = LogFilter()
    for line in SNAKEMAKE_FAILURE.split("tmstarget ERROR")[0].splitlines():
        filt.feed(line)
    filt.feed("This was a dry-run (flag -n). The order of jobs does not reflect the order.")
    lines = filt.closing(None, 0)
    assert lines == ["[tmstarget] plan (dry run, nothing was run):",
                     "  participants: 1 (sub-01)", "  sessions: 1 (sub-01 ses-1)", "  runs: 2",
                     "  steps: 3 (denoise_run 2, target 1)"]
    assert plan_summary([], Counter())[-1] == "  steps: none"


# --------------------------------------------------------------------------- closing summary
def _unit(out: Path, sub: str, ses: str | None, native_extra: dict | None) -> None:
    prefix = f"sub-{sub}" + (f"_ses-{ses}" if ses else "")
    udir = out / f"sub-{sub}" / (f"ses-{ses}" if ses else "")
    (udir / "func").mkdir(parents=True)
    (udir / "anat").mkdir()
    targets = {m: {"x": -40.0 - i, "y": 30.25, "z": 25.0} for i, m in
               enumerate(["classic", "cluster", "weighted"])}
    (udir / "func" / f"{prefix}_task-rest_space-MNI152NLin2009cAsym_desc-target_coords.json"
     ).write_text(json.dumps({"participant_id": f"sub-{sub}", "session_id": ses,
                              "targets": targets, "warnings": ["w1"]}))
    if native_extra is not None:
        native = {"primary_method": "cluster",
                  "targets": {"cluster": {"t1w_mm": [-39.65, 1.22, 49.22]}}, **native_extra}
        (udir / "anat" / f"{prefix}_task-rest_space-T1w_desc-target_coords.json").write_text(
            json.dumps(native))
    (udir / f"{prefix}_report.html").write_text("<html></html>")


def test_closing_summary_reads_the_output_files(tmp_path):
    out = tmp_path / "out"
    _unit(out, "01", None, {"verdict": {"status": "unreliable", "method": "cluster",
                                        "reasons": ["split-half 12 mm"]},
                            "warnings": ["a", "b"]})
    _unit(out, "03", "1", {})  # no verdict in the native JSON: targets.tsv's reliability
    _unit(out, "04", None, {})  # not covered by this run
    (out / "targets.tsv").write_text(
        "participant_id\tsession_id\tmethod\treliability\n"
        "sub-03\tses-1\tcluster\treliable\nsub-03\tses-1\tclassic\tunreliable\n")
    (out / "cohort_report.html").write_text("<html></html>")
    lines = closing_summary(out, ["01", "03", "05"])
    assert lines[0] == "[tmstarget] summary:"
    assert lines[1] == (
        "  sub-01: cluster target MNI152NLin2009cAsym (-41.0, 30.2, 25.0) mm, T1w (-39.6, 1.2, "
        f"49.2) mm; verdict unreliable; 2 warnings; report {out}/sub-01/sub-01_report.html")
    assert lines[2].startswith("  sub-03 ses-1: cluster target") and "verdict reliable" in lines[2]
    assert "1 warning;" in lines[2]
    assert lines[3].startswith("  sub-05: no target written")
    assert lines[4] == f"  cohort report: {out}/cohort_report.html"
    assert not any("sub-04" in ln for ln in lines)


def test_workflow_error_printed_once_with_log_and_summary(tmp_path):
    import nibabel as nb
    import numpy as np
    from test_bad_inputs import copy_sample_participant

    src = copy_sample_participant(tmp_path / "fmriprep")
    cfg = tmp_path / "fast.yaml"
    cfg.write_text("reproducibility:\n  enabled: false\n")
    bold = next((src / "sub-01" / "func").glob("*_desc-preproc_bold.nii.gz"))
    img = nb.load(bold)
    nb.save(nb.Nifti1Image(np.asarray(img.dataobj)[..., 0], img.affine, img.header), bold)
    out = tmp_path / "out"
    res = subprocess.run([sys.executable, "-m", "tmstarget.cli", str(src), str(out),
                          "participant", "--configfile", str(cfg), "--cores", "1"],
                         capture_output=True, text=True, cwd=REPO, timeout=600)
    assert res.returncode != 0
    (line,) = _errors(res.stderr)
    assert bold.name in line and "must be 4D" in line
    logs = list((out / "logs" / "tmstarget").glob("*_snakemake.log"))
    assert len(logs) == 1 and line in logs[0].read_text()  # the full output kept on disk
    assert f"[tmstarget] full Snakemake output: {logs[0]}" in res.stderr
    assert any(ln.startswith("[tmstarget] step denoise_run") and "its log:" in ln
               for ln in res.stderr.splitlines())
    assert "  sub-01: no target written" in res.stderr
    assert "jobid:" not in res.stderr and "Traceback" not in res.stderr


def test_dry_run_plan_of_the_preprocessing_stage():
    filt = LogFilter()
    for line in ["Job stats:", "job              count", "builtin_preproc      2", "all  1",
                 "total  3", "", "rule builtin_preproc:", "    wildcards: participant=01",
                 "rule builtin_preproc:", "    wildcards: participant=02",
                 "This was a dry-run (flag -n)."]:
        filt.feed(line)
    lines = filt.closing(None, 0)
    assert lines[1].startswith("  participants to preprocess: 2 (sub-01, sub-02)")
    assert lines[-1] == "  steps: 2 (builtin_preproc 2)"


def test_builtin_stage_progress_goes_to_the_log(capsys):
    from tmstarget import builtin

    builtin._PROGRESS.update(who="sub-01", start=0.0)
    try:
        builtin._begin("t1w_n4")
    finally:
        builtin._PROGRESS.update(who="", start=None)
    err = capsys.readouterr().err
    assert "[tmstarget] built-in preprocessing sub-01: t1w_n4 (elapsed " in err
