"""Raw BIDS input: detect what the user gave us, and run fMRIPrep in a pinned container.

``tmstarget BIDS_DIR OUTPUT_DIR participant`` accepts either fMRIPrep derivatives (the main
workflow reads them directly) or a raw BIDS dataset. For raw BIDS, a first stage
(``workflow/fmriprep.smk``) runs fMRIPrep from an Apptainer/Singularity image once per
participant, writing into ``OUTPUT_DIR/sourcedata/fmriprep``; the main workflow then reads that
folder exactly as it reads any fMRIPrep output.

The command is built as a list of arguments (never a shell string), so paths with spaces or
quotes stay single arguments. Nothing here downloads anything: the FreeSurfer licence and a
populated TemplateFlow folder must already be on disk.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .errors import ConfigError, InputError

#: Where stage 1 writes fMRIPrep's output, relative to tmstarget's output folder (BIDS
#: convention: a derivative's source datasets live under ``sourcedata/``).
FMRIPREP_SUBDIR = Path("sourcedata") / "fmriprep"

#: fMRIPrep's work folders (one per participant, kept so an interrupted run resumes).
FMRIPREP_WORK_SUBDIR = Path("work") / "fmriprep"

#: Mount points inside the container.
CONTAINER_BIDS = "/data"
CONTAINER_OUT = "/out"
CONTAINER_WORK = "/work"
CONTAINER_LICENSE = "/opt/freesurfer/license.txt"
CONTAINER_TEMPLATEFLOW = "/templateflow"

#: fMRIPrep options tmstarget sets itself; ``preprocessing.extra_args`` may not repeat them.
MANAGED_OPTIONS = frozenset({
    "--participant-label", "--participant_label", "--output-spaces", "--fs-license-file",
    "-w", "--work-dir", "--nprocs", "--nthreads", "--n_cpus", "--n-cpus", "--omp-nthreads",
    "--mem", "--mem_mb", "--mem-mb", "-t", "--task-id", "--fs-no-reconall", "--notrack",
})

#: Output spaces that are not TemplateFlow templates (nothing to find in TEMPLATEFLOW_HOME).
_NONSTANDARD_SPACES = frozenset({"T1w", "T2w", "anat", "fsnative", "func", "run", "bold",
                                 "boldref", "sbref"})

#: fMRIPrep's default skull-stripping template (always needed).
_SKULLSTRIP_TEMPLATE = "OASIS30ANTs"

_SAFE_LABEL = re.compile(r"^[A-Za-z0-9]+$")


def _sub_dirs(root: Path) -> list[Path]:
    """Participant (and session) folders: ``sub-*`` and ``sub-*/ses-*``."""
    out = []
    for sub in sorted(root.glob("sub-*")):
        if sub.is_dir():
            out.append(sub)
            out.extend(ses for ses in sorted(sub.glob("ses-*")) if ses.is_dir())
    return out


def _raw_files(folder: Path, task: str) -> tuple[list[Path], list[Path], list[Path]]:
    """(T1w images, task BOLD images, other BOLD images) directly in one sub/ses folder."""
    t1w = [p for p in sorted((folder / "anat").glob("*_T1w.nii*"))]
    bold_all = [p for p in sorted((folder / "func").glob("*bold.nii*"))
                if "desc-preproc" not in p.name]
    task_bold = [p for p in bold_all if f"_task-{task}_" in p.name]
    other = [p for p in bold_all if p not in task_bold]
    return t1w, task_bold, other


def detect_input(path: str | os.PathLike[str], task: str = "rest") -> str:
    """Tell fMRIPrep derivatives from a raw BIDS dataset.

    Parameters
    ----------
    path : str or PathLike
        The input folder given to ``tmstarget``.
    task : str, optional
        Task label of the resting-state runs (config ``task``), default ``rest``.

    Returns
    -------
    str
        ``"fmriprep"`` for a derivatives tree (``dataset_description.json`` with
        ``DatasetType: derivative`` or ``GeneratedBy`` fMRIPrep, or any
        ``*_desc-preproc_bold.nii*`` file) or ``"raw-bids"`` for a raw dataset
        (``sub-*/[ses-*/]anat/*_T1w.nii*`` and ``sub-*/[ses-*/]func/*_task-<task>_*bold.nii*``).

    Raises
    ------
    InputError
        When the folder is neither, saying what was found.
    """
    root = Path(path).expanduser()
    if not root.is_dir():
        raise InputError(root, "the input folder does not exist (or is not a folder).",
                         "Check the path given to tmstarget.")
    desc = root / "dataset_description.json"
    if desc.is_file():
        try:
            meta = json.loads(desc.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            meta = {}
        if isinstance(meta, dict):
            gen = meta.get("GeneratedBy") or []
            names = [str(g.get("Name", "")) for g in gen if isinstance(g, dict)] \
                if isinstance(gen, list) else []
            if str(meta.get("DatasetType", "")).lower() == "derivative" or any(
                    "fmriprep" in n.lower() for n in names):
                return "fmriprep"
    folders = _sub_dirs(root)
    if any(next((f / "func").glob("*_desc-preproc_bold.nii*"), None) for f in folders):
        return "fmriprep"
    n_t1w = n_bold = n_other = 0
    for f in folders:
        t1w, bold, other = _raw_files(f, task)
        n_t1w, n_bold, n_other = n_t1w + len(t1w), n_bold + len(bold), n_other + len(other)
    if n_t1w and n_bold:
        return "raw-bids"
    n_subs = sum(1 for f in folders if f.name.startswith("sub-"))
    found = (f"found {n_subs} sub-* folder(s), {n_t1w} T1w image(s) (anat/*_T1w.nii*), "
             f"{n_bold} task-{task} BOLD image(s) (func/*_task-{task}_*bold.nii*)"
             + (f" and {n_other} BOLD image(s) of other tasks" if n_other else "")
             + ("" if desc.is_file() else "; no dataset_description.json"))
    raise InputError(root, f"this is neither fMRIPrep derivatives nor a raw BIDS dataset with "
                     f"anatomy and task-{task} BOLD: {found}.",
                     "Point tmstarget at fMRIPrep's output folder, or at a raw BIDS dataset "
                     f"with sub-*/anat/*_T1w.nii.gz and sub-*/func/*_task-{task}_bold.nii.gz "
                     "(set `task` in the config if your resting runs use another label).")


def raw_bids_tasks(path: str | os.PathLike[str]) -> list[str]:
    """Task labels of the raw BOLD runs (``sub-*/[ses-*/]func/*_task-<label>_*bold.nii*``)."""
    tasks = set()
    for folder in _sub_dirs(Path(path).expanduser()):
        for bold in (folder / "func").glob("*bold.nii*"):
            if "desc-preproc" in bold.name:
                continue
            for part in bold.name.split("_"):
                if part.startswith("task-"):
                    tasks.add(part[5:])
    return sorted(tasks)


def auto_task(path: str | os.PathLike[str], task: str, task_was_set: bool) -> str | None:
    """The task to use instead of ``task`` when a raw dataset has no run of it, or None.

    Only when the user did not set ``task`` (the default ``rest`` is in force), the dataset
    has no ``task-rest`` run and its BOLD runs are all of **one** other task: that task is
    returned (the caller must say so loudly: it is task fMRI, not rest). Anything else returns
    None, and input detection then explains what is missing.
    """
    if task_was_set:
        return None
    tasks = raw_bids_tasks(path)
    if task in tasks or len(tasks) != 1:
        return None
    return tasks[0]


def raw_bids_participants(bids_dir: str | os.PathLike[str], task: str = "rest",
                          participant_label: Iterable[str] | None = None,
                          exclude: Iterable[str] | None = None,
                          ) -> tuple[list[str], list[tuple[str, str]]]:
    """Participants of a raw BIDS dataset that fMRIPrep can preprocess for tmstarget.

    Parameters
    ----------
    bids_dir : str or PathLike
        Raw BIDS dataset.
    task : str, optional
        Resting-state task label.
    participant_label, exclude : iterable of str, optional
        Participants to keep / leave out (``01`` or ``sub-01``).

    Returns
    -------
    participants : list of str
        Bare labels with at least one T1w and one task BOLD image, sorted.
    skipped : list of (str, str)
        (label, reason) of the others among those asked for.

    Raises
    ------
    ConfigError
        A participant folder whose label is not a valid BIDS label, or a requested participant
        that has no folder.
    """
    from .discover import normalise_labels

    root = Path(bids_dir).expanduser().resolve()
    wanted = normalise_labels(participant_label)
    excluded = set(normalise_labels(exclude))
    present = sorted(d.name[4:] for d in root.glob("sub-*") if d.is_dir())
    missing = [w for w in wanted if w not in present]
    if missing:
        raise ConfigError(None, f"participant(s) {', '.join(missing)} not found in {root}.",
                          "Check --participant-label against the sub-* folders.")
    keep, skipped = [], []
    for lab in wanted or present:
        if lab in excluded:
            continue
        if not _SAFE_LABEL.match(lab):
            raise ConfigError(root / f"sub-{lab}", f"the participant label '{lab}' is not a "
                              "valid BIDS label (only letters and digits are allowed).",
                              "Rename the folder to a valid BIDS label.")
        folders = [f for f in _sub_dirs(root) if f == root / f"sub-{lab}"
                   or f.parent == root / f"sub-{lab}"]
        n_t1w = n_bold = 0
        for f in folders:
            t1w, bold, _ = _raw_files(f, task)
            n_t1w, n_bold = n_t1w + len(t1w), n_bold + len(bold)
        if n_t1w and n_bold:
            keep.append(lab)
        else:
            what = " and ".join(w for w, n in (("no T1w image", n_t1w),
                                                (f"no task-{task} BOLD image", n_bold)) if not n)
            skipped.append((lab, f"{what} in the raw BIDS dataset"))
    return keep, skipped


def find_runtime(runtime: str = "auto") -> str:
    """Absolute path of the container runtime executable.

    Parameters
    ----------
    runtime : {"auto", "apptainer", "singularity"}
        ``auto`` tries ``apptainer`` then ``singularity`` on ``PATH``.

    Raises
    ------
    ConfigError
        When none is found (or the value is not one of the three).
    """
    if runtime not in ("auto", "apptainer", "singularity"):
        raise ConfigError(None, f"preprocessing.container_runtime '{runtime}' is not one of "
                          "auto, apptainer, singularity.", "Fix the config value.")
    names = ["apptainer", "singularity"] if runtime == "auto" else [runtime]
    for name in names:
        exe = shutil.which(name)
        if exe:
            return exe
    raise ConfigError(None, f"no container runtime found: {' or '.join(names)} is not on PATH "
                      "(preprocessing.container_runtime: " + runtime + ").",
                      "Run on a machine with Apptainer or Singularity (e.g. `module load "
                      "apptainer` on a cluster), or run fMRIPrep yourself and point tmstarget at "
                      "its output folder.")


def _bindable(path: Path, key: str) -> str:
    """A host path usable in ``-B src:dst``: ``:`` and ``,`` would split the bind spec."""
    s = str(path)
    if ":" in s or "," in s:
        raise ConfigError(path, f"this path ({key}) contains ':' or ',', which Apptainer's "
                          "bind option cannot express.", "Move or rename the folder (or use a "
                          "symbolic link without those characters).")
    return s


def required_templates(output_spaces: Sequence[str]) -> list[str]:
    """TemplateFlow templates fMRIPrep needs for these output spaces (plus skull-stripping)."""
    names = [s.split(":", 1)[0] for s in output_spaces]
    tpls = [n for n in names if n and n not in _NONSTANDARD_SPACES]
    return sorted({*tpls, _SKULLSTRIP_TEMPLATE})


def check_templateflow(templateflow_home: str | os.PathLike[str] | None,
                       output_spaces: Sequence[str]) -> Path:
    """The TemplateFlow folder to bind, checked to hold every template fMRIPrep will ask for.

    ``None`` means the ``TEMPLATEFLOW_HOME`` environment variable.

    Raises
    ------
    ConfigError
        Unset, missing, or without a needed ``tpl-<name>`` folder.
    """
    hint = ("Set preprocessing.templateflow_home (or TEMPLATEFLOW_HOME) to a TemplateFlow "
            "folder fetched beforehand on a machine with internet access, e.g. with "
            "`python -c \"import templateflow.api as t; t.get('MNI152NLin2009cAsym'); "
            "t.get('OASIS30ANTs')\"`. The container gets it read-only and cannot download "
            "templates at run time (no network).")
    if templateflow_home is None:
        env = os.environ.get("TEMPLATEFLOW_HOME")
        if not env:
            raise ConfigError(None, "preprocessing.templateflow_home is not set and neither is "
                              "the TEMPLATEFLOW_HOME environment variable.", hint)
        templateflow_home = env
    tf = Path(templateflow_home).expanduser().resolve()
    if not tf.is_dir():
        raise ConfigError(tf, "the TemplateFlow folder (preprocessing.templateflow_home or "
                          "TEMPLATEFLOW_HOME) does not exist.", hint)
    missing = [t for t in required_templates(output_spaces) if not (tf / f"tpl-{t}").is_dir()]
    if missing:
        raise ConfigError(tf, "the TemplateFlow folder lacks "
                          + ", ".join(f"tpl-{t}" for t in missing)
                          + " (needed by fMRIPrep for the output spaces and skull-stripping).",
                          hint)
    return tf


def fmriprep_resources(threads: int, mem_mb: int) -> tuple[int, int, int]:
    """fMRIPrep's ``--nprocs``, ``--omp-nthreads`` and ``--mem-mb`` from a job's allocation.

    ``--nprocs`` is the job's threads; ``--omp-nthreads`` is the same capped at 8 (fMRIPrep's
    own cap: more threads per process do not help); ``--mem-mb`` is 90 % of the job's memory
    (at least 1000 MB), leaving room for the container and Python so that a scheduler's
    memory limit is not hit when fMRIPrep's own soft limit is slightly exceeded.
    """
    nprocs = max(1, int(threads))
    return nprocs, min(nprocs, 8), max(1000, int(mem_mb) * 9 // 10)


def fmriprep_command(
    bids_dir: str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    work_dir: str | os.PathLike[str],
    participant: str,
    *,
    image: str | os.PathLike[str] | None,
    fs_license: str | os.PathLike[str] | None,
    templateflow_home: str | os.PathLike[str] | None = None,
    container_runtime: str = "auto",
    threads: int = 8,
    mem_mb: int = 16000,
    fs_no_reconall: bool = True,
    output_spaces: Sequence[str] = ("MNI152NLin2009cAsym:res-2", "T1w"),
    extra_args: Sequence[str] = (),
    task: str | None = "rest",
) -> list[str]:
    """The exact command that runs one participant through a pinned fMRIPrep container.

    Parameters
    ----------
    bids_dir : str or PathLike
        Raw BIDS dataset (bound read-only at ``/data``).
    output_dir : str or PathLike
        fMRIPrep output folder (bound at ``/out``; ``OUTPUT_DIR/sourcedata/fmriprep``).
    work_dir : str or PathLike
        fMRIPrep work folder of this participant (bound at ``/work``).
    participant : str
        Participant label (``01`` or ``sub-01``).
    image : str or PathLike
        Apptainer/Singularity image file (``preprocessing.fmriprep_image``).
    fs_license : str or PathLike
        FreeSurfer licence file (``preprocessing.fs_license``), bound read-only.
    templateflow_home : str or PathLike, optional
        Pre-fetched TemplateFlow folder, bound read-only (``None``: ``$TEMPLATEFLOW_HOME``).
    container_runtime : {"auto", "apptainer", "singularity"}
        Executable to use (``auto``: apptainer, else singularity).
    threads, mem_mb : int
        The job's threads and memory; mapped by :func:`fmriprep_resources`.
    fs_no_reconall : bool
        Add ``--fs-no-reconall`` (no FreeSurfer surfaces; tmstarget does not need them).
    output_spaces : sequence of str
        fMRIPrep ``--output-spaces``; must include ``MNI152NLin2009cAsym`` (the main workflow
        reads it) and should include ``T1w`` (native-space targets).
    extra_args : sequence of str
        Further fMRIPrep options, appended as given (each item one argument).
    task : str or None
        ``--task-id``: only the resting-state runs are preprocessed (``None``: all tasks).

    Returns
    -------
    list of str
        ``[runtime, "run", "--cleanenv", "-B", ..., image, "/data", "/out", "participant", ...]``.

    Raises
    ------
    ConfigError
        A missing image, licence, TemplateFlow folder or runtime, an invalid label, a path
        Apptainer cannot bind, or ``extra_args`` repeating an option tmstarget sets.
    """
    if image is None or str(image) == "":
        raise ConfigError(None, "preprocessing.fmriprep_image is not set.",
                          "Set it to an fMRIPrep Apptainer/Singularity image file, e.g. one "
                          "built with `apptainer build fmriprep-24.1.1.sif "
                          "docker://nipreps/fmriprep:24.1.1`.")
    img = Path(image).expanduser().resolve()
    if not img.is_file():
        raise ConfigError(img, "the fMRIPrep image (preprocessing.fmriprep_image) does not "
                          "exist.", "Check the path, or build the image with `apptainer build "
                          "fmriprep-<version>.sif docker://nipreps/fmriprep:<version>`.")
    if fs_license is None or str(fs_license) == "":
        raise ConfigError(None, "preprocessing.fs_license is not set; fMRIPrep needs a "
                          "FreeSurfer licence file even with --fs-no-reconall.",
                          "Get one free at https://surfer.nmr.mgh.harvard.edu/registration.html "
                          "and set preprocessing.fs_license to its path.")
    lic = Path(fs_license).expanduser().resolve()
    if not lic.is_file():
        raise ConfigError(lic, "the FreeSurfer licence file (preprocessing.fs_license) does "
                          "not exist.", "Check the path (get a licence free at "
                          "https://surfer.nmr.mgh.harvard.edu/registration.html).")
    spaces = [str(s) for s in output_spaces]
    if not any(s.split(":", 1)[0] == "MNI152NLin2009cAsym" for s in spaces):
        raise ConfigError(None, "preprocessing.output_spaces must include MNI152NLin2009cAsym "
                          "(tmstarget reads the BOLD in that space).",
                          "Add 'MNI152NLin2009cAsym:res-2' to preprocessing.output_spaces.")
    label = str(participant).removeprefix("sub-")
    if not _SAFE_LABEL.match(label):
        raise ConfigError(None, f"the participant label '{label}' is not a valid BIDS label.",
                          "Use letters and digits only.")
    extra = [str(a) for a in extra_args]
    clash = sorted({a.split("=", 1)[0] for a in extra} & MANAGED_OPTIONS)
    if clash:
        raise ConfigError(None, f"preprocessing.extra_args repeats {', '.join(clash)}, which "
                          "tmstarget sets itself.", "Remove it: threads and memory come from "
                          "the rule's resources (set-resources in a Snakemake profile), "
                          "spaces and reconall from their own preprocessing keys.")
    tf = check_templateflow(templateflow_home, spaces)
    exe = find_runtime(container_runtime)
    bids = Path(bids_dir).expanduser().resolve()
    out = Path(output_dir).expanduser().resolve()
    work = Path(work_dir).expanduser().resolve()
    nprocs, omp, mem = fmriprep_resources(threads, mem_mb)
    cmd = [
        exe, "run", "--cleanenv",
        "-B", f"{_bindable(bids, 'the raw BIDS dataset')}:{CONTAINER_BIDS}:ro",
        "-B", f"{_bindable(out, 'the fMRIPrep output folder')}:{CONTAINER_OUT}",
        "-B", f"{_bindable(work, 'the fMRIPrep work folder')}:{CONTAINER_WORK}",
        "-B", f"{_bindable(lic, 'preprocessing.fs_license')}:{CONTAINER_LICENSE}:ro",
        "-B", f"{_bindable(tf, 'preprocessing.templateflow_home')}:{CONTAINER_TEMPLATEFLOW}:ro",
        "--env", f"TEMPLATEFLOW_HOME={CONTAINER_TEMPLATEFLOW}",
        str(img),
        CONTAINER_BIDS, CONTAINER_OUT, "participant",
        "--participant-label", label,
    ]
    if task:
        cmd += ["--task-id", str(task)]
    cmd += ["--output-spaces", *spaces]
    if fs_no_reconall:
        cmd.append("--fs-no-reconall")
    cmd += ["--fs-license-file", CONTAINER_LICENSE, "-w", CONTAINER_WORK,
            "--nprocs", str(nprocs), "--omp-nthreads", str(omp), "--mem-mb", str(mem),
            "--notrack", *extra]
    return cmd


def run_fmriprep(
    bids_dir: str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    work_dir: str | os.PathLike[str],
    participant: str,
    done: str | os.PathLike[str],
    cfg: Mapping[str, Any],
    task: str | None = "rest",
    threads: int = 8,
    mem_mb: int = 16000,
) -> list[str]:
    """Run fMRIPrep for one participant (the ``fmriprep`` rule) and write its done-marker.

    Parameters
    ----------
    bids_dir, output_dir, work_dir, participant, task, threads, mem_mb
        See :func:`fmriprep_command`.
    done : str or PathLike
        JSON marker written on success: the command, the image (path, size, modification
        time) and the wall time.
    cfg : mapping
        The ``preprocessing`` config section.

    Returns
    -------
    list of str
        The command that was run.

    Raises
    ------
    TmsTargetError
        fMRIPrep failed (non-zero exit) or did not write the participant's folder.
    """
    from .errors import TmsTargetError

    label = str(participant).removeprefix("sub-")
    cmd = fmriprep_command(
        bids_dir, output_dir, work_dir, label, image=cfg.get("fmriprep_image"),
        fs_license=cfg.get("fs_license"), templateflow_home=cfg.get("templateflow_home"),
        container_runtime=cfg.get("container_runtime", "auto"), threads=threads,
        mem_mb=mem_mb, fs_no_reconall=cfg.get("fs_no_reconall", True),
        output_spaces=cfg.get("output_spaces") or ("MNI152NLin2009cAsym:res-2", "T1w"),
        extra_args=cfg.get("extra_args") or (), task=task)
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    Path(work_dir).mkdir(parents=True, exist_ok=True)
    stream = sys.stderr
    print("[tmstarget] running: " + " ".join(_quote(a) for a in cmd), file=stream, flush=True)
    t0 = time.time()
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):
        fd = None
    if fd is not None:
        rc = subprocess.run(cmd, stdout=fd, stderr=subprocess.STDOUT, check=False).returncode
    else:
        res = subprocess.run(cmd, capture_output=True, text=True, check=False)
        stream.write(res.stdout + res.stderr)
        rc = res.returncode
    sub_dir = Path(output_dir) / f"sub-{label}"
    if rc != 0:
        raise TmsTargetError(f"fMRIPrep failed for sub-{label} (exit code {rc}); its messages "
                             "are in this job's log. What to do: fix the cause and run the same "
                             "command again (fMRIPrep resumes from its work folder "
                             f"{work_dir}).")
    if not sub_dir.is_dir():
        raise TmsTargetError(f"fMRIPrep finished for sub-{label} but wrote no {sub_dir}. What "
                             "to do: read this job's log and fMRIPrep's report.")
    img = Path(str(cfg.get("fmriprep_image"))).expanduser().resolve()
    st = img.stat()
    marker = {"participant": label, "command": cmd, "image": str(img),
              "image_size_bytes": st.st_size, "image_mtime": st.st_mtime,
              "wall_time_s": round(time.time() - t0, 1)}
    tmp = Path(str(done) + ".tmp")
    tmp.parent.mkdir(parents=True, exist_ok=True)
    tmp.write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, done)
    return cmd


def _quote(arg: str) -> str:
    """Shell-quoted form of one argument, for the log only (the command is never a string)."""
    import shlex

    return shlex.quote(arg)


#: Where the built-in (ANTsPy) path writes, relative to tmstarget's output folder.
BUILTIN_SUBDIR = Path("sourcedata") / "builtin"
#: Its per-participant completion markers.
BUILTIN_WORK_SUBDIR = Path("work") / "builtin"


def resolve_method(pre: Mapping[str, Any] | None) -> str:
    """Which preprocessing a raw BIDS input gets: ``"fmriprep"`` or ``"builtin"``.

    ``preprocessing.method: auto`` (the default) means fMRIPrep when
    ``preprocessing.fmriprep_image`` is set, else the built-in ANTsPy path.

    Raises
    ------
    ConfigError
        ``method: fmriprep`` without an image, or the built-in path without ANTsPy installed.
    """
    pre = dict(pre or {})
    method = str(pre.get("method") or "auto")
    if method not in ("auto", "fmriprep", "builtin"):
        raise ConfigError(None, f"preprocessing.method is '{method}'.",
                          "Use auto, fmriprep or builtin.")
    if method == "auto":
        method = "fmriprep" if pre.get("fmriprep_image") else "builtin"
    if method == "fmriprep" and not pre.get("fmriprep_image"):
        raise ConfigError(None, "preprocessing.method is fmriprep but "
                          "preprocessing.fmriprep_image is not set.",
                          "Set preprocessing.fmriprep_image to an fMRIPrep Apptainer/"
                          "Singularity image, or use method: builtin.")
    if method == "builtin":
        from .builtin import builtin_available

        if not builtin_available():
            raise ConfigError(None, "this is a raw BIDS dataset and the built-in preprocessing "
                              "needs ANTsPy, which is not installed (and "
                              "preprocessing.fmriprep_image is not set).",
                              "Install it with: pip install 'tmstarget[preproc]' — or set "
                              "preprocessing.fmriprep_image to run fMRIPrep in its container, "
                              "or run fMRIPrep yourself and point tmstarget at its output.")
    return method


def stage1_output_subdir(method: str) -> Path:
    """Folder (relative to the output folder) holding stage 1's derivatives."""
    return BUILTIN_SUBDIR if method == "builtin" else FMRIPREP_SUBDIR
