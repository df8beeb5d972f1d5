"""The tmstarget BIDS-app command line (no workflow execution)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tmstarget.cli import build_command, build_parser, main

REPO = Path(__file__).resolve().parents[1]


def test_command_wraps_snakemake_and_passes_options_through(tmp_path):
    src = tmp_path / "fmriprep"
    src.mkdir()
    args, extra = build_parser().parse_known_args(
        [str(src), str(tmp_path / "out"), "participant", "--participant-label", "01", "sub-02",
         "--cores", "3", "--dry-run", "--rerun-triggers", "mtime"])
    cmd, override = build_command(args, extra)
    assert cmd[1:3] == ["-m", "snakemake"]
    assert cmd[cmd.index("--cores") + 1] == "3"
    assert cmd[cmd.index("--directory") + 1] == str((tmp_path / "out").resolve())
    assert "--dry-run" in cmd and cmd[-2:] == ["--rerun-triggers", "mtime"]
    assert str(override) in cmd
    assert "--keep-going" in cmd
    assert args.participant_label == ["01", "sub-02"]


def test_output_inside_input_refused_before_anything_is_written(tmp_path, capsys):
    src = tmp_path / "fmriprep"
    src.mkdir()
    rc = main([str(src), str(src / "derivatives" / "tms"), "participant"])
    assert rc == 2
    assert "inside the input dataset" in capsys.readouterr().err
    assert list(src.iterdir()) == []


def test_only_participant_level():
    with pytest.raises(SystemExit):
        build_parser().parse_args(["a", "b", "group"])


def test_missing_configfile_is_named(tmp_path, capsys):
    src = tmp_path / "fmriprep"
    src.mkdir()
    rc = main([str(src), str(tmp_path / "out"), "participant", "--configfile",
               str(tmp_path / "my_settings.yaml")])
    assert rc == 2
    assert "my_settings.yaml: config file not found" in capsys.readouterr().err


def test_help_runs():
    res = subprocess.run([sys.executable, "-m", "tmstarget.cli", "--help"], capture_output=True,
                         text=True, cwd=REPO)
    assert res.returncode == 0 and "participant" in res.stdout and "SAFETY.md" in res.stdout
