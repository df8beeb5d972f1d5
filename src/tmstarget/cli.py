"""``tmstarget`` command: a BIDS-app front end to the Snakemake workflow.

    tmstarget FMRIPREP_DIR OUTPUT_DIR participant [--participant-label 01 02]
              [--exclude-label 03] [--configfile F] [--cores N] [--profile P]
              [any snakemake option, e.g. --dry-run]

Everything after the known options is passed to Snakemake unchanged.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from . import __version__
from .errors import TmsTargetError
from .plan import check_paths

#: The repository (or source tree) holding the Snakefile.
WORKFLOW_ROOT = Path(__file__).resolve().parents[2]


def snakefile() -> Path:
    """Path of the workflow's Snakefile; a clear error when the package is not a source install."""
    sf = WORKFLOW_ROOT / "Snakefile"
    if not sf.is_file():
        raise TmsTargetError(
            f"cannot find the tmstarget workflow (expected {sf}). Install tmstarget from its "
            "source folder with `pip install -e .` so the workflow files are available.")
    return sf


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (BIDS-app conventions)."""
    p = argparse.ArgumentParser(
        prog="tmstarget",
        description="Personalized sgACC-anticorrelated left-DLPFC TMS targets from fMRIPrep "
                    "derivatives. Research use only; not a medical device (see SAFETY.md). "
                    "Unknown options are passed to Snakemake.",
    )
    p.add_argument("fmriprep_dir", help="fMRIPrep derivatives folder (with dataset_description.json)")
    p.add_argument("output_dir", help="output folder (BIDS derivatives); must not be inside the input")
    p.add_argument("analysis_level", choices=["participant"],
                   help="'participant': targets for each participant, plus the cohort table")
    p.add_argument("--participant-label", "--participant_label", nargs="+", default=[],
                   metavar="LABEL", help="only these participants (01 or sub-01)")
    p.add_argument("--exclude-label", nargs="+", default=[], metavar="LABEL",
                   help="leave these participants out")
    p.add_argument("--configfile", action="append", default=[], metavar="FILE",
                   help="YAML config overriding the defaults (see workflow/schemas/config.schema.yaml)")
    p.add_argument("--cores", "-c", default="all", help="CPU cores to use (default: all)")
    p.add_argument("--profile", default=None,
                   help="Snakemake profile folder (e.g. profiles/local); default profiles/local")
    p.add_argument("--stop-on-error", action="store_true",
                   help="stop at the first failing participant (default: keep going with the others)")
    p.add_argument("--version", action="version", version=f"tmstarget {__version__}")
    return p


def build_command(args: argparse.Namespace, extra: Sequence[str]) -> tuple[list[str], Path]:
    """The snakemake command line and the override config file it needs.

    Returns
    -------
    cmd : list of str
    override : Path
        YAML file (inside the output folder) with the paths and labels given on the
        command line; written by :func:`main`.
    """
    src, out = check_paths(args.fmriprep_dir, args.output_dir)
    override = out / "work" / "tmstarget_cli_config.yaml"
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(snakefile()),
           "--directory", str(out), "--cores", str(args.cores)]
    profile = args.profile or str(WORKFLOW_ROOT / "profiles" / "local")
    if Path(profile).is_dir():
        cmd += ["--profile", str(Path(profile).resolve())]
    elif args.profile:
        cmd += ["--profile", args.profile]
    files = [str(Path(f).resolve()) for f in args.configfile] + [str(override)]
    cmd += ["--configfile", *files]
    if not args.stop_on_error:
        cmd.append("--keep-going")
    cmd += list(extra)
    return cmd, override


def _check_writable(out: Path) -> None:
    """Refuse an output folder that cannot be written, before anything runs."""
    import tempfile

    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".tmstarget-write-test-"):
            pass
    except OSError as exc:
        raise TmsTargetError(f"{out}: the output folder cannot be written ({exc.strerror}). "
                             "What to do: choose a folder you can write to, or fix its "
                             "permissions.") from None


def _acquire_output_lock(out: Path) -> Any:
    """Hold an exclusive lock on the output folder for the life of this process.

    The operating system releases it when the process ends in any way (even SIGKILL), so if we
    get it, no other ``tmstarget`` run is working here and a Snakemake lock left in
    ``.snakemake/locks`` by a killed run is stale: it is removed so that the same command
    resumes. Returns the open lock file, or ``None`` if another run holds it.
    """
    import fcntl
    import shutil

    path = out / "work" / ".tmstarget.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    fh = open(path, "w")  # noqa: SIM115 - kept open until the process exits
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.close()
        return None
    locks = out / ".snakemake" / "locks"
    if locks.is_dir() and any(locks.iterdir()):
        print("[tmstarget] an earlier run was interrupted; resuming where it stopped",
              file=sys.stderr, flush=True)
        shutil.rmtree(locks, ignore_errors=True)
    return fh


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tmstarget`` command."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    try:
        cmd, override = build_command(args, extra)
        for f in args.configfile:
            if not Path(f).is_file():
                raise TmsTargetError(f"{f}: config file not found. What to do: check the path "
                                     "given to --configfile.")
    except TmsTargetError as exc:
        print(f"tmstarget ERROR: {exc}", file=sys.stderr)
        return 2
    try:
        src, out = check_paths(args.fmriprep_dir, args.output_dir)
        _check_writable(out)
    except TmsTargetError as exc:
        print(f"tmstarget ERROR: {exc}", file=sys.stderr)
        return 2
    overrides = {"fmriprep_dir": str(src), "output_dir": str(out)}
    if args.participant_label:
        overrides["participant_label"] = [str(x) for x in args.participant_label]
    if args.exclude_label:
        overrides["exclude_participants"] = [str(x) for x in args.exclude_label]
    override.parent.mkdir(parents=True, exist_ok=True)
    override.write_text("# written by the tmstarget command for this output folder\n"
                        + yaml.safe_dump(overrides, sort_keys=True))
    lock = _acquire_output_lock(out)
    if lock is None:
        print(f"tmstarget ERROR: {out}: another tmstarget run is using this output folder. "
              "What to do: wait for it to finish, or choose another output folder.",
              file=sys.stderr)
        return 2
    print(f"[tmstarget] {__version__}: {src} -> {out}", file=sys.stderr, flush=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(WORKFLOW_ROOT / "src"), *filter(None, [env.get("PYTHONPATH")])])
    return subprocess.call(cmd, env=env)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
