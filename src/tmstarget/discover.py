"""Find fMRIPrep derivatives to process, with pybids.

pybids (the BIDS library fMRIPrep itself is built on) indexes the derivatives tree; we then
pair every preprocessed BOLD run in MNI152NLin2009cAsym with its brain mask, confounds
TSV + JSON and BOLD JSON sidecar. Anything incomplete is *reported* with a reason, never
silently skipped.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import ConfigError, InputError

#: Entities that identify one run (besides the space/res of the image files).
_RUN_KEYS = ("subject", "session", "task", "acquisition", "run")


@dataclass(frozen=True)
class RunInputs:
    """The input files of one preprocessed BOLD run.

    Attributes
    ----------
    participant, session, task, acq, run : str or None
        BIDS labels exactly as written in the file names (``session``, ``acq`` and ``run``
        are ``None`` when absent).
    bold, mask, confounds, confounds_json, bold_json : str
        Absolute paths.
    """

    participant: str
    session: str | None
    task: str
    acq: str | None
    run: str | None
    bold: str
    mask: str
    confounds: str
    confounds_json: str
    bold_json: str

    @property
    def unit(self) -> tuple[str, str | None]:
        """(participant, session): the unit a target is computed for."""
        return (self.participant, self.session)

    def to_dict(self) -> dict[str, str | None]:
        """Plain-dict view (for tables and JSON)."""
        return asdict(self)


@dataclass(frozen=True)
class Skipped:
    """A participant (or session or run) that has nothing usable, and why."""

    participant: str
    session: str | None
    run: str | None
    reason: str


def normalise_labels(labels: Iterable[str] | None) -> list[str]:
    """Accept ``01`` or ``sub-01``; return bare labels, sorted and unique."""
    out = set()
    for lab in labels or []:
        lab = str(lab).strip()
        if lab.startswith("sub-"):
            lab = lab[4:]
        if lab:
            out.add(lab)
    return sorted(out)


def _label(path: str, key: str) -> str | None:
    """Entity label as written in the file name (keeps zero padding, e.g. ``run-01``)."""
    m = re.search(rf"(?:^|_){key}-([^_/]+)", Path(path).name)
    return m.group(1) if m else None


def discover(
    fmriprep_dir: str | Path,
    task: str = "rest",
    space: str = "MNI152NLin2009cAsym",
    res: str | None = None,
    participant_label: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
) -> tuple[list[RunInputs], list[Skipped]]:
    """Discover usable runs in an fMRIPrep derivatives directory.

    Parameters
    ----------
    fmriprep_dir : str or Path
        Root of the fMRIPrep derivatives (holds ``dataset_description.json``).
    task : str
        Task label of the resting-state runs.
    space : str
        Template space of the preprocessed BOLD (only ``MNI152NLin2009cAsym`` is supported).
    res : str, optional
        ``res-`` label to use when fMRIPrep wrote several resolutions.
    participant_label : sequence of str, optional
        Only these participants (``01`` or ``sub-01``); every one must exist.
    exclude : sequence of str, optional
        Participants to leave out.

    Returns
    -------
    runs : list of RunInputs
        Sorted by participant, session, run.
    skipped : list of Skipped
        Participants/sessions/runs with nothing usable and the reason.

    Raises
    ------
    InputError
        The directory does not exist, is not a BIDS derivatives dataset, or holds no
        participant; a requested participant does not exist.
    """
    from bids import BIDSLayout, BIDSLayoutIndexer

    root = Path(fmriprep_dir).expanduser().resolve()
    if not root.is_dir():
        raise InputError(root, "the fMRIPrep derivatives directory does not exist.",
                         "Give the folder fMRIPrep wrote (it contains dataset_description.json "
                         "and sub-* folders).")
    if not (root / "dataset_description.json").is_file():
        raise InputError(root, "no dataset_description.json: this is not a BIDS derivatives "
                         "dataset.", "Point tmstarget at fMRIPrep's output folder (the one "
                         "with dataset_description.json and sub-* folders).")
    try:
        layout = BIDSLayout(
            root, validate=False, config=["bids", "derivatives"],
            indexer=BIDSLayoutIndexer(validate=False, index_metadata=False),
        )
    except Exception as exc:  # pybids raises many types on malformed datasets
        raise InputError(root / "dataset_description.json", f"cannot index the dataset ({exc}).",
                         "Check that dataset_description.json is valid JSON.") from exc

    all_subjects = sorted(layout.get_subjects())
    if not all_subjects:
        raise InputError(root, "no sub-* participant folders found (empty dataset).",
                         "Point tmstarget at fMRIPrep's output folder.")
    wanted = normalise_labels(participant_label)
    missing = [s for s in wanted if s not in all_subjects]
    if missing:
        raise InputError(root, f"participant(s) {', '.join('sub-' + s for s in missing)} not found "
                         f"(found: {', '.join('sub-' + s for s in all_subjects)}).",
                         "Check --participant-label.")
    excluded = set(normalise_labels(exclude))
    subjects = [s for s in (wanted or all_subjects) if s not in excluded]

    def files(**query: object) -> list[str]:
        return sorted(f.path for f in layout.get(task=task, subject=subjects, **query))

    bolds = files(datatype="func", suffix="bold", desc="preproc", space=space,
                  extension=[".nii.gz", ".nii"])
    masks = files(datatype="func", suffix="mask", desc="brain", space=space,
                  extension=[".nii.gz", ".nii"])
    confs = files(datatype="func", suffix="timeseries", desc="confounds", extension=".tsv")
    confjs = files(datatype="func", suffix="timeseries", desc="confounds", extension=".json")

    def key(path: str) -> tuple[str | None, ...]:
        return (_label(path, "sub"), _label(path, "ses"), _label(path, "task"),
                _label(path, "acq"), _label(path, "run"))

    def imgkey(path: str) -> tuple[str | None, ...]:
        return (*key(path), _label(path, "res"))

    mask_by = {imgkey(p): p for p in masks}
    conf_by = {key(p): p for p in confs}
    confj_by = {key(p): p for p in confjs}

    by_run: dict[tuple[str | None, ...], list[str]] = {}
    for b in bolds:
        by_run.setdefault(key(b), []).append(b)

    runs: list[RunInputs] = []
    skipped: list[Skipped] = []
    for k in sorted(by_run, key=lambda t: tuple("" if v is None else v for v in t)):
        sub, ses, _task, acq, run = k
        cands = by_run[k]
        if res is not None:
            cands = [c for c in cands if _label(c, "res") == str(res)]
            if not cands:
                skipped.append(Skipped(sub or "", ses, run, f"no BOLD with res-{res}"))
                continue
        if len(cands) > 1:
            raise ConfigError(cands[0], "fMRIPrep wrote this run at several resolutions ("
                              + ", ".join(Path(c).name for c in cands) + ").",
                              "Choose one with `res:` in the config (e.g. res: '2').")
        bold = cands[0]
        problems = []
        mask = mask_by.get(imgkey(bold))
        if mask is None:
            problems.append("brain mask (…_desc-brain_mask.nii.gz) missing")
        conf = conf_by.get(k)
        if conf is None:
            problems.append("confounds (…_desc-confounds_timeseries.tsv) missing")
        confj = confj_by.get(k)
        if confj is None:
            problems.append("confounds sidecar (…_desc-confounds_timeseries.json) missing")
        bjson = re.sub(r"\.nii(\.gz)?$", ".json", bold)
        if not Path(bjson).is_file():
            problems.append("BOLD sidecar JSON (RepetitionTime) missing")
        if problems:
            skipped.append(Skipped(sub or "", ses, run, f"{Path(bold).name}: " + "; ".join(problems)))
            continue
        runs.append(RunInputs(sub or "", ses, task, acq, run, bold, mask, conf, confj, bjson))

    # Folders pybids cannot index because their label is not a valid BIDS label
    # (spaces, quotes, ';', unicode, ...): report them, never drop them silently.
    for d in sorted(root.glob("sub-*")):
        lab = d.name[4:]
        if d.is_dir() and not re.fullmatch(r"[A-Za-z0-9]+", lab):
            skipped.append(Skipped(lab, None, None, f"folder name {d.name!r} is not a valid BIDS "
                                   "participant label (letters and digits only); rename it"))
    have = {r.participant for r in runs}
    for s in subjects:
        if s not in have and not any(x.participant == s for x in skipped):
            skipped.append(Skipped(s, None, None, f"no preprocessed BOLD for task '{task}' in "
                                   f"space {space} (…_space-{space}_desc-preproc_bold.nii.gz)"))
    return runs, skipped
