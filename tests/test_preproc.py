"""Raw BIDS input: detection, the fMRIPrep container command, the fmriprep stage and the CLI.

No container runtime exists here: a fake ``apptainer`` executable on a temporary PATH stands
in for it (it only records its arguments and creates the participant's output folder).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tmstarget.errors import ConfigError, InputError
from tmstarget.preproc import (
    detect_input,
    fmriprep_command,
    fmriprep_resources,
    raw_bids_participants,
)

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data_sample"

FAKE_RUNTIME = """#!{python}
import json, os, sys
args = sys.argv[1:]
with open(os.environ["FAKE_RUNTIME_LOG"], "a") as fh:
    fh.write(json.dumps(args) + "\\n")
out = [a.split(":")[0] for a in args if a.endswith(":/out")][0]
lab = args[args.index("--participant-label") + 1]
os.makedirs(os.path.join(out, "sub-" + lab, "func"), exist_ok=True)
"""


def make_raw_bids(root: Path, subjects=("01", "02"), sessions=(None,)) -> Path:
    """Tiny raw BIDS tree (empty image files): anat T1w + func task-rest BOLD + sidecars."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(json.dumps(
        {"Name": "raw", "BIDSVersion": "1.9.0", "DatasetType": "raw"}))
    for sub in subjects:
        for ses in sessions:
            d = root / f"sub-{sub}" / (f"ses-{ses}" if ses else "")
            p = f"sub-{sub}" + (f"_ses-{ses}" if ses else "")
            (d / "anat").mkdir(parents=True, exist_ok=True)
            (d / "func").mkdir(parents=True, exist_ok=True)
            (d / "anat" / f"{p}_T1w.nii.gz").write_bytes(b"")
            (d / "anat" / f"{p}_T1w.json").write_text("{}")
            (d / "func" / f"{p}_task-rest_bold.nii.gz").write_bytes(b"")
            (d / "func" / f"{p}_task-rest_bold.json").write_text(
                json.dumps({"RepetitionTime": 2.0}))
    return root


@pytest.fixture
def site(tmp_path, monkeypatch):
    """A fake image, licence, TemplateFlow folder and apptainer executable (on PATH)."""
    s = tmp_path / "site files"  # a space on purpose
    s.mkdir()
    (s / "fmriprep-24.1.1.sif").write_bytes(b"not really an image")
    (s / "license.txt").write_text("licence\n")
    for tpl in ("MNI152NLin2009cAsym", "OASIS30ANTs"):
        (s / "templateflow" / f"tpl-{tpl}").mkdir(parents=True)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    exe = bindir / "apptainer"
    exe.write_text(FAKE_RUNTIME.format(python=sys.executable))
    exe.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_RUNTIME_LOG", str(tmp_path / "runtime_calls.jsonl"))
    monkeypatch.delenv("TEMPLATEFLOW_HOME", raising=False)
    return {"image": s / "fmriprep-24.1.1.sif", "fs_license": s / "license.txt",
            "templateflow_home": s / "templateflow", "exe": exe,
            "calls": tmp_path / "runtime_calls.jsonl"}


def build(site, tmp_path, **kw):
    args = {"image": site["image"], "fs_license": site["fs_license"],
            "templateflow_home": site["templateflow_home"], **kw}
    return fmriprep_command(tmp_path / "bids", tmp_path / "out" / "sourcedata" / "fmriprep",
                            tmp_path / "out" / "work" / "fmriprep" / "sub-01", "01", **args)


# --------------------------------------------------------------------------- detection
def test_sample_derivatives_detected_as_fmriprep():
    assert detect_input(SAMPLE) == "fmriprep"


def test_derivatives_without_description_detected_by_preproc_bold(tmp_path):
    f = tmp_path / "d" / "sub-01" / "func"
    f.mkdir(parents=True)
    (f / "sub-01_task-rest_space-MNI152NLin2009cAsym_desc-preproc_bold.nii.gz").touch()
    assert detect_input(tmp_path / "d") == "fmriprep"


def test_raw_bids_detected_with_and_without_sessions(tmp_path):
    assert detect_input(make_raw_bids(tmp_path / "raw")) == "raw-bids"
    assert detect_input(make_raw_bids(tmp_path / "raw_ses", sessions=("1", "2"))) == "raw-bids"


def test_empty_folder_refused_saying_what_was_found(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError) as err:
        detect_input(tmp_path / "empty")
    msg = str(err.value)
    assert "neither fMRIPrep derivatives nor a raw BIDS dataset" in msg
    assert "found 0 sub-* folder(s)" in msg and "What to do:" in msg


def test_raw_bids_without_rest_bold_refused(tmp_path):
    raw = make_raw_bids(tmp_path / "raw")
    for f in raw.rglob("*_task-rest_bold.nii.gz"):
        f.rename(f.with_name(f.name.replace("task-rest", "task-nback")))
    with pytest.raises(InputError, match="2 BOLD image.s. of other tasks"):
        detect_input(raw)
    assert detect_input(raw, task="nback") == "raw-bids"


def test_missing_folder_refused(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        detect_input(tmp_path / "nope")


def test_participants_with_anat_and_rest_bold(tmp_path):
    raw = make_raw_bids(tmp_path / "raw", subjects=("01", "02", "03"))
    (raw / "sub-03" / "anat" / "sub-03_T1w.nii.gz").unlink()
    keep, skipped = raw_bids_participants(raw)
    assert keep == ["01", "02"]
    assert skipped == [("03", "no T1w image in the raw BIDS dataset")]
    assert raw_bids_participants(raw, participant_label=["sub-02"])[0] == ["02"]
    assert raw_bids_participants(raw, exclude=["01"])[0] == ["02"]
    with pytest.raises(ConfigError, match="07 not found"):
        raw_bids_participants(raw, participant_label=["07"])


# --------------------------------------------------------------------------- the command
def test_exact_command_bindings_and_resources(site, tmp_path):
    cmd = build(site, tmp_path, threads=8, mem_mb=16000)

    def r(p):
        return str(Path(p).resolve())

    assert cmd == [
        str(site["exe"]), "run", "--cleanenv",
        "-B", f"{r(tmp_path / 'bids')}:/data:ro",
        "-B", f"{r(tmp_path / 'out/sourcedata/fmriprep')}:/out",
        "-B", f"{r(tmp_path / 'out/work/fmriprep/sub-01')}:/work",
        "-B", f"{r(site['fs_license'])}:/opt/freesurfer/license.txt:ro",
        "-B", f"{r(site['templateflow_home'])}:/templateflow:ro",
        "--env", "TEMPLATEFLOW_HOME=/templateflow",
        r(site["image"]), "/data", "/out", "participant",
        "--participant-label", "01", "--task-id", "rest",
        "--output-spaces", "MNI152NLin2009cAsym:res-2", "T1w", "--fs-no-reconall",
        "--fs-license-file", "/opt/freesurfer/license.txt", "-w", "/work",
        "--nprocs", "8", "--omp-nthreads", "8", "--mem-mb", "14400", "--notrack",
    ]


def test_read_only_mounts_are_exactly_input_licence_templateflow(site, tmp_path):
    cmd = build(site, tmp_path)
    binds = [cmd[i + 1] for i, a in enumerate(cmd) if a == "-B"]
    ro = {b.split(":")[1] for b in binds if b.endswith(":ro")}
    rw = {b.split(":")[1] for b in binds if not b.endswith(":ro")}
    assert ro == {"/data", "/opt/freesurfer/license.txt", "/templateflow"}
    assert rw == {"/out", "/work"}


@pytest.mark.parametrize(("threads", "mem", "expected"), [
    (8, 16000, (8, 8, 14400)), (16, 32000, (16, 8, 28800)), (2, 1000, (2, 2, 1000)),
    (1, 32000, (1, 1, 28800))])
def test_resource_mapping(site, tmp_path, threads, mem, expected):
    assert fmriprep_resources(threads, mem) == expected
    cmd = build(site, tmp_path, threads=threads, mem_mb=mem)
    got = tuple(int(cmd[cmd.index(o) + 1]) for o in ("--nprocs", "--omp-nthreads", "--mem-mb"))
    assert got == expected


def test_options_reconall_spaces_extra_and_singularity(site, tmp_path):
    sing = site["exe"].with_name("singularity")
    shutil.copy(site["exe"], sing)
    cmd = build(site, tmp_path, fs_no_reconall=False, container_runtime="singularity",
                output_spaces=["MNI152NLin2009cAsym:res-1"], task=None,
                extra_args=["--skip-bids-validation", "--dummy-scans", "4"])
    assert cmd[0] == str(sing)
    assert "--fs-no-reconall" not in cmd and "--task-id" not in cmd
    assert cmd[cmd.index("--output-spaces") + 1:cmd.index("--output-spaces") + 3] == [
        "MNI152NLin2009cAsym:res-1", "--fs-license-file"]
    assert cmd[-3:] == ["--skip-bids-validation", "--dummy-scans", "4"]


def test_hostile_paths_stay_single_arguments(site, tmp_path):
    bids = tmp_path / "my data; rm -rf ~" / "it's \"raw\" $HOME"
    out = tmp_path / "out put" / "sourcedata" / "fmriprep"
    cmd = fmriprep_command(bids, out, tmp_path / "w o r k", "sub-01", image=site["image"],
                           fs_license=site["fs_license"],
                           templateflow_home=site["templateflow_home"])
    assert f"{bids.resolve()}:/data:ro" in cmd
    assert f"{out.resolve()}:/out" in cmd
    assert f"{(tmp_path / 'w o r k').resolve()}:/work" in cmd
    assert str(site["image"].resolve()) in cmd  # "site files/..." has a space
    assert cmd[cmd.index("--participant-label") + 1] == "01"
    # the fake runtime receives them unchanged (no shell anywhere)
    subprocess.run(cmd, check=True, env={**os.environ})
    call = json.loads(site["calls"].read_text().splitlines()[-1])
    assert call == cmd[1:]
    assert (out / "sub-01").is_dir()


def test_colon_in_path_refused(site, tmp_path):
    with pytest.raises(ConfigError, match="contains ':' or ','"):
        fmriprep_command(tmp_path / "a:b", tmp_path / "o", tmp_path / "w", "01",
                         image=site["image"], fs_license=site["fs_license"],
                         templateflow_home=site["templateflow_home"])


def test_bad_label_refused(site, tmp_path):
    with pytest.raises(ConfigError, match="not a valid BIDS label"):
        fmriprep_command(tmp_path / "b", tmp_path / "o", tmp_path / "w", "01 --anat-only",
                         image=site["image"], fs_license=site["fs_license"],
                         templateflow_home=site["templateflow_home"])


# --------------------------------------------------------------------------- refusals
def test_missing_image_refused(site, tmp_path):
    with pytest.raises(ConfigError, match=r"fMRIPrep image \(preprocessing.fmriprep_image\) "
                                          "does not exist"):
        build(site, tmp_path, image=tmp_path / "nope.sif")
    with pytest.raises(ConfigError, match="preprocessing.fmriprep_image is not set"):
        build(site, tmp_path, image=None)


def test_missing_licence_refused(site, tmp_path):
    with pytest.raises(ConfigError, match=r"licence file \(preprocessing.fs_license\) does "
                                          "not exist"):
        build(site, tmp_path, fs_license=tmp_path / "license.txt")
    with pytest.raises(ConfigError, match="preprocessing.fs_license is not set"):
        build(site, tmp_path, fs_license=None)


def test_templateflow_refusals_say_no_network(site, tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="does not exist") as err:
        build(site, tmp_path, templateflow_home=tmp_path / "tf")
    assert "cannot download templates at run time" in str(err.value)
    with pytest.raises(ConfigError, match="TEMPLATEFLOW_HOME environment variable"):
        build(site, tmp_path, templateflow_home=None)
    monkeypatch.setenv("TEMPLATEFLOW_HOME", str(site["templateflow_home"]))
    assert "/templateflow" in " ".join(build(site, tmp_path, templateflow_home=None))
    shutil.rmtree(site["templateflow_home"] / "tpl-OASIS30ANTs")
    with pytest.raises(ConfigError, match="lacks tpl-OASIS30ANTs"):
        build(site, tmp_path)


def test_missing_runtime_refused(site, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    with pytest.raises(ConfigError, match="apptainer or singularity is not on PATH") as err:
        build(site, tmp_path)
    assert "run fMRIPrep yourself" in str(err.value)
    with pytest.raises(ConfigError, match="singularity is not on PATH"):
        build(site, tmp_path, container_runtime="singularity")


def test_managed_options_in_extra_args_refused(site, tmp_path):
    with pytest.raises(ConfigError, match="--nprocs"):
        build(site, tmp_path, extra_args=["--nprocs", "64"])
    with pytest.raises(ConfigError, match="--mem"):
        build(site, tmp_path, extra_args=["--mem=9999"])


def test_output_spaces_must_include_mni(site, tmp_path):
    with pytest.raises(ConfigError, match="must include MNI152NLin2009cAsym"):
        build(site, tmp_path, output_spaces=["T1w"])


# --------------------------------------------------------------------------- workflow + CLI
def stage1_config(tmp_path, site, bids, out, **extra) -> Path:
    cfg = {"bids_dir": str(bids), "output_dir": str(out),
           "preprocessing": {"fmriprep_image": str(site["image"]),
                             "fs_license": str(site["fs_license"]),
                             "templateflow_home": str(site["templateflow_home"])}, **extra}
    f = tmp_path / "stage1.yaml"
    f.write_text(yaml.safe_dump(cfg))
    return f


def test_dry_run_one_fmriprep_job_per_participant(site, tmp_path):
    bids = make_raw_bids(tmp_path / "raw", subjects=("01", "02", "03"), sessions=("1", "2"))
    out = tmp_path / "out"
    cfg = stage1_config(tmp_path, site, bids, out)
    res = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(REPO / "workflow" / "fmriprep.smk"), "-n",
         "--cores", "8", "--configfile", str(cfg), "--directory", str(tmp_path)],
        check=False, capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    text = res.stdout + res.stderr
    assert set(re.findall(r"^\s*fmriprep\s+(\d+)\s*$", text, re.MULTILINE)) == {"3"}
    for sub in ("01", "02", "03"):
        assert f"{out}/sourcedata/fmriprep/sub-{sub}" in text
        assert f"{out}/logs/fmriprep/sub-{sub}.log" in text
    assert "threads: 8" in text and "mem_mb=16000" in text and "runtime=480" in text


def test_stage1_runs_the_container_command_and_writes_marker(site, tmp_path):
    bids = make_raw_bids(tmp_path / "raw")
    out = tmp_path / "out"
    cfg = stage1_config(tmp_path, site, bids, out, participant_label=["02"])
    res = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(REPO / "workflow" / "fmriprep.smk"),
         "--cores", "4", "--configfile", str(cfg), "--directory", str(tmp_path),
         "--resources", "mem_mb=64000"],
        check=False, capture_output=True, text=True, cwd=tmp_path, env={**os.environ})
    assert res.returncode == 0, res.stderr[-3000:]
    marker = json.loads((out / "work" / "fmriprep" / "sub-02.done").read_text())
    call = json.loads(site["calls"].read_text().splitlines()[-1])
    assert marker["command"][1:] == call
    assert call[call.index("--nprocs") + 1] == "4"  # snakemake scaled threads to --cores
    assert call[call.index("--mem-mb") + 1] == "14400"
    assert (out / "sourcedata" / "fmriprep" / "sub-02").is_dir()
    assert "[tmstarget] running:" in (out / "logs" / "fmriprep" / "sub-02.log").read_text()


def test_stage1_fmriprep_method_requires_an_image(tmp_path):
    bids = make_raw_bids(tmp_path / "raw")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"bids_dir": str(bids), "output_dir": str(tmp_path / "o"),
                                   "preprocessing": {"method": "fmriprep"}}))
    res = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(REPO / "workflow" / "fmriprep.smk"), "-n",
         "--cores", "1", "--configfile", str(cfg), "--directory", str(tmp_path)],
        check=False, capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode != 0
    assert ("tmstarget ERROR: preprocessing.method is fmriprep but "
            "preprocessing.fmriprep_image is not set") in res.stderr


def test_cli_raw_bids_without_image_or_antspy_stops_clearly(tmp_path, capsys, monkeypatch):
    import tmstarget.builtin
    from tmstarget.cli import main

    monkeypatch.setattr(tmstarget.builtin, "builtin_available", lambda: False)
    bids = make_raw_bids(tmp_path / "raw")
    rc = main([str(bids), str(tmp_path / "out"), "participant"])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("tmstarget ERROR: this is a raw BIDS dataset and the built-in "
                          "preprocessing needs ANTsPy, which is not installed")
    assert "pip install 'tmstarget[preproc]'" in err
    assert "preprocessing.fmriprep_image" in err
    assert not (tmp_path / "out").exists()  # nothing written


def test_cli_raw_bids_refusal_names_config_key(site, tmp_path, capsys):
    from tmstarget.cli import main

    bids = make_raw_bids(tmp_path / "raw")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"preprocessing": {"fmriprep_image": str(site["image"]),
                                                     "fs_license": str(tmp_path / "nolic")}}))
    rc = main([str(bids), str(tmp_path / "out"), "participant", "--configfile", str(cfg)])
    assert rc == 2
    assert "preprocessing.fs_license" in capsys.readouterr().err


def test_cli_raw_bids_dry_run_announces_and_plans_stage1(site, tmp_path):
    bids = make_raw_bids(tmp_path / "raw")
    cfg = stage1_config(tmp_path, site, bids, tmp_path / "unused")
    res = subprocess.run(
        [sys.executable, "-m", "tmstarget.cli", str(bids), str(tmp_path / "out"), "participant",
         "--configfile", str(cfg), "--cores", "2", "--dry-run"],
        check=False, capture_output=True, text=True, cwd=REPO, env={**os.environ})
    assert res.returncode == 0, res.stderr[-3000:]
    assert "raw BIDS dataset found; preprocessing: fMRIPrep container" in res.stderr
    text = res.stdout + res.stderr
    # the CLI's plan summary (Snakemake's job table goes to the log file)
    assert re.search(r"^\s*participants to preprocess: 2 \(sub-01, sub-02\)", text, re.M), text
    assert re.search(r"^\s*steps: \d+ \((.*, )?fmriprep 2(,.*)?\)\s*$", text, re.M), text
    assert "the targets stage is planned once preprocessing has run" in res.stderr
    override = yaml.safe_load((tmp_path / "out" / "work" / "tmstarget_cli_config.yaml")
                              .read_text())
    assert override["fmriprep_dir"] == str((tmp_path / "out" / "sourcedata" / "fmriprep")
                                           .resolve())
    assert override["bids_dir"] == str(bids.resolve())


def test_stage2_may_read_fmriprep_output_inside_output_folder(tmp_path):
    from tmstarget.plan import check_paths

    out = tmp_path / "out"
    check_paths(out / "sourcedata" / "fmriprep", out)  # stage 1's output: allowed
    with pytest.raises(ConfigError, match="inside the output folder"):
        check_paths(out / "other", out)


FAKE_FMRIPREP = """#!{python}
import os, shutil, sys
args = sys.argv[1:]
out = [a.split(":")[0] for a in args if a.endswith(":/out")][0]
lab = args[args.index("--participant-label") + 1]
shutil.copy(os.path.join({sample!r}, "dataset_description.json"), out)
shutil.copytree(os.path.join({sample!r}, "sub-" + lab), os.path.join(out, "sub-" + lab),
                dirs_exist_ok=True)
"""


@pytest.mark.e2e
def test_cli_raw_bids_two_stages_end_to_end(site, tmp_path):
    """Stage 1 with a stand-in 'fMRIPrep' (copies a sample participant), then the targets."""
    site["exe"].write_text(FAKE_FMRIPREP.format(python=sys.executable, sample=str(SAMPLE)))
    bids = make_raw_bids(tmp_path / "raw", subjects=("01",))
    cfg = stage1_config(tmp_path, site, bids, tmp_path / "unused",
                        reproducibility={"enabled": False})
    out = tmp_path / "out"
    res = subprocess.run(
        [sys.executable, "-m", "tmstarget.cli", str(bids), str(out), "participant",
         "--configfile", str(cfg), "--cores", "2"],
        check=False, capture_output=True, text=True, cwd=REPO, env={**os.environ}, timeout=900)
    assert res.returncode == 0, res.stderr[-4000:]
    assert "raw BIDS dataset found" in res.stderr and "stage 2: targets from" in res.stderr
    assert (out / "sourcedata" / "fmriprep" / "sub-01").is_dir()
    assert (out / "sub-01" / "func" /
            "sub-01_task-rest_space-MNI152NLin2009cAsym_desc-target_coords.json").is_file()
    assert (out / "sub-01" / "anat" /
            "sub-01_task-rest_space-T1w_desc-target_coords.json").is_file()
    assert "sub-01\tn/a\tclassic" in (out / "targets.tsv").read_text()
