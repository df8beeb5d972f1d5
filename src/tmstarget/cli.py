"""``tmstarget`` command: a BIDS-app front end to the Snakemake workflow.

    tmstarget FMRIPREP_DIR OUTPUT_DIR participant [--participant-label 01 02]
              [--exclude-label 03] [--configfile F] [--cores N] [--profile P]
              [any snakemake option, e.g. --dry-run]

Everything after the known options is passed to Snakemake unchanged. With a raw BIDS dataset
as input, it is first preprocessed (stage 1) by the built-in ANTsPy path into
``OUTPUT_DIR/sourcedata/builtin`` (the default), or, when ``preprocessing.fmriprep_image`` is
set, by fMRIPrep from a container (``workflow/fmriprep.smk``) into
``OUTPUT_DIR/sourcedata/fmriprep``; the workflow then reads that folder (stage 2).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from . import __version__
from .errors import TmsTargetError
from .plan import check_paths
from .preproc import (
    FMRIPREP_SUBDIR,
    FMRIPREP_WORK_SUBDIR,
    detect_input,
    fmriprep_command,
    resolve_method,
    stage1_output_subdir,
)
from .runlock import RESUME_HINT, Interrupted, RunLock, run_owned

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
                    "Unknown options are passed to Snakemake (e.g. -n / --dry-run: show the "
                    "plan and a summary of it, run nothing).",
    )
    p.add_argument("fmriprep_dir",
                   help="fMRIPrep derivatives folder (with dataset_description.json), or a raw "
                        "BIDS dataset: it is then preprocessed first by the built-in ANTsPy path "
                        "(the default), or by fMRIPrep from the container image in "
                        "preprocessing.fmriprep_image when that is set (see README)")
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
    p.add_argument("--verbose", action="store_true",
                   help="print Snakemake's full output (job blocks, and its own --verbose debug "
                        "lines such as each sbatch call) on the terminal; by default it goes to "
                        "OUTPUT_DIR/logs/tmstarget/ and the terminal shows progress, each error "
                        "once and a closing summary")
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
    if args.verbose and "--verbose" not in extra:
        cmd.append("--verbose")  # Snakemake's debug lines too (e.g. each sbatch call)
    cmd += list(extra)
    return cmd, override


def load_config(configfiles: Sequence[str | Path]) -> dict[str, Any]:
    """config/config.yaml and the ``--configfile`` YAMLs, merged as Snakemake does per section.

    Later files win; a section (a mapping, e.g. ``preprocessing``) is merged key by key, other
    values are replaced. Only used to read a few values before Snakemake runs; Snakemake
    validates the full configuration itself.
    """
    cfg: dict[str, Any] = {}
    for f in [WORKFLOW_ROOT / "config" / "config.yaml", *map(Path, configfiles)]:
        try:
            data = yaml.safe_load(Path(f).read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise TmsTargetError(f"{f}: cannot read this config file ({exc}). What to do: "
                                 "check that it is valid YAML.") from None
        if not isinstance(data, dict):
            raise TmsTargetError(f"{f}: a config file must be a YAML mapping (key: value).")
        for key, value in data.items():
            if isinstance(value, dict) and isinstance(cfg.get(key), dict):
                cfg[key] = {**cfg[key], **value}
            else:
                cfg[key] = value
    return cfg


def _auto_task(src: Path, cfg: dict[str, Any], configfiles: Sequence[str]) -> str | None:
    """Use the only task of a raw dataset that has no rest run (``cfg['task']`` is updated).

    Only when no ``--configfile`` sets ``task``; returns the loud line to print, or None.
    """
    from .preproc import auto_task

    user_set = any("task" in (load_config_file(f) or {}) for f in configfiles)
    found = auto_task(src, str(cfg.get("task", "rest")), user_set)
    if found is None:
        return None
    was = cfg.get("task", "rest")
    cfg["task"] = found
    return (f"[tmstarget] NOTE: {src} has no task-{was} BOLD run; its BOLD runs are all "
            f"task-{found}, so tmstarget uses those. THIS IS TASK fMRI, NOT REST: connectivity "
            "is computed on it as on a resting run (see the README, 'Task scans as a source "
            "of connectivity'). To choose the task yourself, set `task:` in a --configfile.")


def load_config_file(path: str | Path) -> dict[str, Any] | None:
    """One YAML config file as a mapping (None when it cannot be read)."""
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None
    return data if isinstance(data, dict) else None


def raw_bids_stage(src: Path, out: Path, cfg: dict[str, Any]) -> tuple[str, Path]:
    """Check that a raw BIDS input can be preprocessed; what will be done and where.

    Returns
    -------
    line : str
        The message saying which preprocessing runs.
    stage1_dir : Path
        The derivatives folder stage 1 writes (the main workflow's input).

    Raises
    ------
    TmsTargetError
        The fMRIPrep command cannot be built (missing image, licence, TemplateFlow folder or
        container runtime), or the built-in path is chosen and ANTsPy is not installed.
    """
    pre = cfg.get("preprocessing") or {}
    task = cfg.get("task", "rest")
    method = resolve_method(pre)
    stage1_dir = out / stage1_output_subdir(method)
    if method == "builtin":
        return (f"[tmstarget] {src}: raw BIDS dataset found; preprocessing: tmstarget built-in "
                "(ANTsPy: motion correction, coregistration, SyN to MNI152NLin2009cAsym; no "
                "distortion or slice-timing correction; set preprocessing.fmriprep_image to use "
                f"fMRIPrep instead), one job per participant, into {stage1_dir}"), stage1_dir
    cmd = fmriprep_command(
        src, out / FMRIPREP_SUBDIR, out / FMRIPREP_WORK_SUBDIR, "check",
        image=pre.get("fmriprep_image"), fs_license=pre.get("fs_license"),
        templateflow_home=pre.get("templateflow_home"),
        container_runtime=pre.get("container_runtime", "auto"),
        fs_no_reconall=pre.get("fs_no_reconall", True),
        output_spaces=pre.get("output_spaces") or ("MNI152NLin2009cAsym:res-2", "T1w"),
        extra_args=pre.get("extra_args") or (), task=task)
    image = Path(str(pre["fmriprep_image"])).expanduser().resolve()
    return (f"[tmstarget] {src}: raw BIDS dataset found; preprocessing: fMRIPrep container "
            f"{image} run with {Path(cmd[0]).name}, one job per participant, into "
            f"{stage1_dir}"), stage1_dir


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


def _check_config(cfg: dict[str, Any], configfiles: Sequence[str]) -> None:
    """Refuse a configuration with problems, one line each, before anything is written."""
    from .configcheck import config_problems

    problems = config_problems(cfg)
    if problems:
        files = ", ".join(configfiles) or "config/config.yaml"
        raise TmsTargetError("\ntmstarget ERROR: ".join(problems)
                             + f"\n(config read from {files}; nothing was run or written)")


def _check_input(src: Path, cfg: dict[str, Any], labels: Sequence[str],
                 exclude: Sequence[str]) -> None:
    """Refuse a missing input folder or a participant label it does not hold, fast.

    Only the ``sub-*`` folders are listed (no BIDS indexing), so the refusal takes well under
    a second and nothing is written.
    """
    from .discover import normalise_labels

    if not src.is_dir():
        raise TmsTargetError(f"{src}: the input folder does not exist. What to do: check the "
                             "path (an fMRIPrep derivatives folder or a raw BIDS dataset).")
    found = sorted(d.name[4:] for d in src.glob("sub-*") if d.is_dir())
    if not found:
        return  # no sub-* folder at all: the workflow says what it looked for
    for what, given in (("--participant-label", labels), ("--exclude-label", exclude)):
        missing = [s for s in normalise_labels(given) if s not in found]
        if missing:
            raise TmsTargetError(
                f"{src}: participant(s) {', '.join('sub-' + s for s in missing)} not found "
                f"(found: {', '.join('sub-' + s for s in found)}). What to do: check "
                f"{what}.")


def _acquire_output_lock(out: Path) -> RunLock | None:
    """Take the output folder for this run (:class:`tmstarget.runlock.RunLock`).

    Returns the held lock, or ``None`` after printing why the folder is busy (another run, or
    jobs of an interrupted run that still live).
    """
    lock = RunLock(out)
    if lock.acquire():
        return lock
    print(f"tmstarget ERROR: {lock.message}", file=sys.stderr)
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tmstarget`` command."""
    try:
        return _main(argv)
    except KeyboardInterrupt:  # Ctrl-C before Snakemake started: nothing was run
        print(f"\n[tmstarget] interrupted: {RESUME_HINT}", file=sys.stderr, flush=True)
        return 130


def _main(argv: Sequence[str] | None = None) -> int:
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
    stage1_line = None
    try:
        src, out = check_paths(args.fmriprep_dir, args.output_dir)
        cfg = load_config(args.configfile)
        _check_config(cfg, args.configfile)
        _check_input(src, cfg, args.participant_label, args.exclude_label)
        task_line = _auto_task(src, cfg, args.configfile)
        try:
            kind = detect_input(src, str(cfg.get("task", "rest")))
        except TmsTargetError:
            kind = None  # neither: the workflow reports what is wrong, as before
        if kind == "raw-bids":
            stage1_line, stage1_dir = raw_bids_stage(src, out, cfg)
        _check_writable(out)
    except TmsTargetError as exc:
        print(f"tmstarget ERROR: {exc}", file=sys.stderr)
        return 2
    overrides = {"fmriprep_dir": str(src), "output_dir": str(out)}
    if task_line is not None:  # the only task of a raw dataset without rest runs
        overrides["task"] = str(cfg["task"])
        print(task_line, file=sys.stderr, flush=True)
    if stage1_line is not None:  # raw BIDS: stage 2 reads stage 1's fMRIPrep output
        overrides["bids_dir"] = str(src)
        overrides["fmriprep_dir"] = str(stage1_dir)
    elif kind == "fmriprep":
        print(f"[tmstarget] {src}: fMRIPrep derivatives found; no preprocessing needed",
              file=sys.stderr, flush=True)
    if args.participant_label:
        overrides["participant_label"] = [str(x) for x in args.participant_label]
    if args.exclude_label:
        overrides["exclude_participants"] = [str(x) for x in args.exclude_label]
    # the folder is this run's before anything in it changes (a refused second run must not
    # rewrite the live run's override config, which its jobs read again)
    lock = _acquire_output_lock(out)
    if lock is None:
        return 2
    try:
        return _run(args, extra, cmd, override, overrides, src, out, stage1_line,
                    stage1_dir if stage1_line is not None else None, lock)
    except Interrupted as exc:
        name = signal.Signals(exc.signum).name
        print(f"[tmstarget] interrupted ({name}); every job was stopped: {RESUME_HINT}",
              file=sys.stderr, flush=True)
        return 128 + exc.signum
    finally:
        lock.release()


def _run(args: argparse.Namespace, extra: Sequence[str], cmd: list[str], override: Path,
         overrides: dict[str, Any], src: Path, out: Path, stage1_line: str | None,
         stage1_dir: Path | None, lock: RunLock) -> int:
    """Write the override config and run the stage(s), owning the folder."""
    override.parent.mkdir(parents=True, exist_ok=True)
    override.write_text("# written by the tmstarget command for this output folder\n"
                        + yaml.safe_dump(overrides, sort_keys=True))
    print(f"[tmstarget] {__version__}: {src} -> {out}", file=sys.stderr, flush=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(WORKFLOW_ROOT / "src"), *filter(None, [env.get("PYTHONPATH")])])
    env.pop("TMSTARGET_LOG_FILE", None)
    if not args.verbose:  # Snakemake's full output to a log file, the readable lines here
        import time

        logdir = out / "logs" / "tmstarget"
        logdir.mkdir(parents=True, exist_ok=True)
        env["TMSTARGET_LOG_FILE"] = str(
            logdir / time.strftime("%Y%m%dT%H%M%SZ_snakemake.log", time.gmtime()))
    dry = any(a in ("-n", "--dry-run", "--dryrun") for a in extra)
    if stage1_line is None:
        rc = run_owned(cmd, env, lock)
        _print_summary(args, src, out, rc, dry)
        return rc
    assert stage1_dir is not None
    # raw BIDS: stage 1 (fMRIPrep container, workflow/fmriprep.smk), then the main workflow
    print(stage1_line, file=sys.stderr, flush=True)
    stage1 = list(cmd)
    stage1[stage1.index("--snakefile") + 1] = str(WORKFLOW_ROOT / "workflow" / "fmriprep.smk")
    rc1 = run_owned(stage1, env, lock)
    if any(a in ("-n", "--dry-run", "--dryrun") for a in extra):
        print("[tmstarget] dry run: the targets stage is planned once preprocessing has run",
              file=sys.stderr, flush=True)
        return rc1
    if rc1 != 0 and (args.stop_on_error or not stage1_dir.is_dir()):
        return rc1
    print(f"[tmstarget] stage 2: targets from {stage1_dir}", file=sys.stderr, flush=True)
    rc2 = run_owned(cmd, env, lock)
    _print_summary(args, src, out, rc1 or rc2, dry)
    return rc1 or rc2


def covered_participants(src: Path, labels: Sequence[str], exclude: Sequence[str]) -> list[str]:
    """Bare labels this run covers: the given ones, or every ``sub-*`` of the input; minus
    the excluded ones."""
    from .discover import normalise_labels

    wanted = normalise_labels(labels) or sorted(
        d.name[4:] for d in src.glob("sub-*") if d.is_dir())
    excluded = set(normalise_labels(exclude))
    return [s for s in wanted if s not in excluded]


def _print_summary(args: argparse.Namespace, src: Path, out: Path, rc: int, dry: bool) -> None:
    """The closing summary of a finished (not dry) run, read from the output files."""
    if dry:
        return
    from .terminal import closing_summary

    lines = closing_summary(out, covered_participants(src, args.participant_label,
                                                      args.exclude_label))
    if rc != 0 and lines:
        lines[0] = "[tmstarget] summary (the run had errors, see above):"
    for line in lines:
        print(line, file=sys.stderr, flush=True)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
