"""Find fMRIPrep derivatives to process, with pybids' rules.

pybids (the BIDS library fMRIPrep itself is built on) indexes the derivatives tree, or, when
the tree holds nothing it does not model, :func:`_fast_index` gives the same index from one
walk of the folders (pybids' own patterns, without its database: ~40x faster for a
1,000-participant tree; tests compare the two on every discovery); we then
pair every preprocessed BOLD run in MNI152NLin2009cAsym with its brain mask, confounds
TSV + JSON and BOLD JSON sidecar. Anything incomplete is *reported* with a reason, never
silently skipped.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import InputError
from .inputcheck import input_problem, read_json_object

#: What pybids need not index: only ``func`` files are queried here (pybids' defaults plus
#: fMRIPrep's anat/figures/log folders, reports and surfaces; :func:`discover` also leaves out
#: images in other spaces and boldrefs); indexing a 100-participant tree drops from ~20 s to
#: a few seconds (benchmarks/bench_dryrun_cohort.py).
_INDEX_IGNORE = ["code", "stimuli", "sourcedata", "models", re.compile(r"/\."),
                 re.compile(r"/sub-[^/]+/(ses-[^/]+/)?(anat|fmap|dwi|perf|figures|log)(/|$)"),
                 re.compile(r"/(figures|logs?|freesurfer|sourcedata)(/|$)"),
                 re.compile(r"\.(html|svg|gii|h5|txt|x5|mgz|lta)$")]

#: pybids' own ``ALWAYS_IGNORE`` (bids.layout.validation; a test checks they agree).
_PYBIDS_ALWAYS_IGNORE = (re.compile(r"/\."),)
#: File and folder names the fast index (:func:`_fast_index`) handles; anything else (spaces,
#: quotes, non-ASCII, ...) is left to pybids itself.
_PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
#: The pybids entities :func:`discover` queries (names in pybids' ``bids``/``derivatives``
#: configurations, whose patterns :func:`_pybids_patterns` reads).
_QUERIED_ENTITIES = ("subject", "task", "datatype", "suffix", "desc", "space", "extension")
#: Set TMSTARGET_CHECK_FAST_INDEX=1 to have every discovery compare the fast index with pybids
#: (the tests do, tests/conftest.py).
CHECK_FAST_INDEX_ENV = "TMSTARGET_CHECK_FAST_INDEX"

#: Entities of an image file that are not part of a run's identity: which image of the run it
#: is (template space, resolution, cohort, density, description). Every other entity (``acq``,
#: ``ce``, ``rec``, ``dir``, ``run``, ``echo``, ``part``, ...) tells runs apart: ``dir-AP`` and
#: ``dir-PA`` rest runs of one participant are two runs.
_IMAGE_ENTITIES = frozenset({"space", "res", "cohort", "den", "desc"})
#: Entities with their own field in :class:`RunInputs`.
_NAMED_ENTITIES = ("sub", "ses", "task")


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
    entities : tuple of (str, str)
        Every entity that identifies the run besides ``sub``, ``ses`` and ``task``, in file-name
        order (e.g. ``(("dir", "AP"), ("run", "1"))``); ``acq`` and ``run`` are also repeated
        in their own fields.
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
    entities: tuple[tuple[str, str], ...] = ()

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


def _entities(path: str) -> list[tuple[str, str]]:
    """``key-value`` pairs of a BIDS file name, in order (the suffix is left out)."""
    stem = Path(path).name.split(".", 1)[0]
    out = []
    for part in stem.split("_")[:-1]:
        key, sep, value = part.partition("-")
        if sep:
            out.append((key, value))
    return out


def run_key(path: str) -> tuple[tuple[str, str], ...]:
    """What identifies a file's run: all its entities except the image ones (space, res, ...)."""
    return tuple((k, v) for k, v in _entities(path) if k not in _IMAGE_ENTITIES)


def _label(path: str, key: str) -> str | None:
    """Entity label as written in the file name (keeps zero padding, e.g. ``run-01``)."""
    m = re.search(rf"(?:^|_){key}-([^_/]+)", Path(path).name)
    return m.group(1) if m else None


def _pybids_patterns() -> dict[str, re.Pattern[str]] | None:
    """The regular expressions pybids extracts :data:`_QUERIED_ENTITIES` with, read from its
    configuration files (``bids.json`` then ``derivatives.json``, later ones win, as in
    ``BIDSLayoutIndexer``) without importing pybids; None if they cannot be read."""
    import importlib.util
    import json

    try:
        spec = importlib.util.find_spec("bids")
        base = Path(next(iter(spec.submodule_search_locations or []))) / "layout" / "config"
        pats: dict[str, str] = {}
        for name in ("bids", "derivatives"):
            for ent in json.loads((base / f"{name}.json").read_text(encoding="utf-8"))["entities"]:
                if ent.get("mandatory"):
                    return None  # pybids would stop reading entities there: not modelled
                pats[ent["name"]] = ent.get("pattern")
        return {k: re.compile(pats[k]) for k in _QUERIED_ENTITIES}
    except (AttributeError, ImportError, KeyError, OSError, StopIteration, TypeError,
            ValueError, re.error):
        return None


def _exclude_patterns(ignore: Sequence[str | re.Pattern[str]]) -> list[re.Pattern[str]]:
    """pybids' exclusion patterns for ``ignore`` (bids.layout.validation.validate_indexing_args
    and bids.layout.index._regexfy): a name becomes ``^/name.*``, matched, like the regular
    expressions, against the path relative to the root with a leading ``/``."""
    out = [p if hasattr(p, "search") else re.compile(r"^/" + str(p) + r".*") for p in ignore]
    return out + list(_PYBIDS_ALWAYS_IGNORE)


def _fast_index(root: Path, ignore: Sequence[str | re.Pattern[str]]
                ) -> list[tuple[str, dict[str, str | None]]] | None:
    """The files pybids would index under ``root`` with these ignore patterns, each with the
    :data:`_QUERIED_ENTITIES` pybids would give it, without pybids (~40x faster on 1,000
    participants). The walk and the exclusions follow pybids' ``BIDSLayoutIndexer``; each
    entity is pybids' own pattern searched in the same absolute path. Returns None (use
    pybids) for what is not modelled here: symbolic links, special files, unlistable
    folders, names outside :data:`_PLAIN_NAME`, a ``derivatives`` folder at the root,
    ``layout_config.json`` files, ``.zarr`` folders."""
    pats = _pybids_patterns()
    if pats is None:
        return None
    excl = _exclude_patterns(ignore)
    found: list[tuple[str, dict[str, str | None]]] = []
    stack = [(str(root), "")]
    while stack:
        folder, rel = stack.pop()
        try:
            with os.scandir(folder) as it:
                entries = list(it)
        except OSError:
            return None
        for e in entries:
            name = e.name
            if name == "layout_config.json":
                return None
            r = f"{rel}/{name}"  # what pybids matches its exclusions against
            if any(p.search(r) for p in excl):
                continue  # file or folder (followed link or not), pybids leaves it out too
            if not _PLAIN_NAME.fullmatch(name) or e.is_symlink():
                return None
            if e.is_dir(follow_symlinks=False):
                if name.endswith(".zarr") or (not rel and name == "derivatives"):
                    return None
                stack.append((e.path, r))
            elif e.is_file(follow_symlinks=False):
                ents: dict[str, str | None] = {}
                for k, pat in pats.items():
                    m = pat.search(e.path)
                    ents[k] = m.group(1) if m is not None else None
                found.append((e.path, ents))
            else:
                return None
    return found


def _query(index: list[tuple[str, dict[str, str | None]]], **filters: object) -> list[str]:
    """Sorted paths of the files whose entities match ``filters`` as ``BIDSLayout.get``
    matches them (a value or any of a list of values; an empty list filters nothing)."""
    want = {k: ([str(x) for x in v] if isinstance(v, (list, tuple)) else [str(v)])
            for k, v in filters.items()}
    want = {k: set(v) for k, v in want.items() if v}
    return sorted(f for f, ents in index if all(ents[k] in v for k, v in want.items()))


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
    root = Path(fmriprep_dir).expanduser().resolve()
    if not root.is_dir():
        raise InputError(root, "the fMRIPrep derivatives directory does not exist.",
                         "Give the folder fMRIPrep wrote (it contains dataset_description.json "
                         "and sub-* folders).")
    if not (root / "dataset_description.json").is_file():
        raise InputError(root, "no dataset_description.json: this is not a BIDS derivatives "
                         "dataset.", "Point tmstarget at fMRIPrep's output folder (the one "
                         "with dataset_description.json and sub-* folders).")
    read_json_object(root / "dataset_description.json", "dataset description")
    ignore = [*_INDEX_IGNORE, re.compile(rf"_(space-(?!{re.escape(space)}_)[^_/]+_[^/]*"
                                         r"|boldref\.[^/]*)$")]
    index = _fast_index(root, ignore)
    layout = None
    if index is None or os.environ.get(CHECK_FAST_INDEX_ENV) == "1":
        from bids import BIDSLayout, BIDSLayoutIndexer

        try:
            layout = BIDSLayout(
                root, validate=False, config=["bids", "derivatives"],
                indexer=BIDSLayoutIndexer(validate=False, index_metadata=False, ignore=ignore),
            )
        except Exception as exc:  # pybids raises many types on malformed datasets
            raise InputError(root / "dataset_description.json", f"cannot index the dataset "
                             f"({exc}).", "Check that dataset_description.json is valid JSON."
                             ) from exc

    def get(**query: object) -> list[str]:
        """Sorted paths of the indexed files matching a pybids query (fast index or pybids;
        both when checking, which must agree)."""
        fast = None if index is None else _query(index, **query)
        if layout is None:
            assert fast is not None
            return fast
        slow = sorted(f.path for f in layout.get(**query))
        if fast is not None and fast != slow:
            raise AssertionError(f"fast index != pybids for {query}: only fast "
                                 f"{sorted(set(fast) - set(slow))}, only pybids "
                                 f"{sorted(set(slow) - set(fast))}")
        return slow

    # participant folders with a valid label, and any participant with func files: cheap,
    # unlike layout.get_subjects(), which loads every file's entities (~40 s for 100)
    all_subjects = sorted(({d.name[4:] for d in root.glob("sub-*") if d.is_dir()
                            and re.fullmatch(r"[A-Za-z0-9]+", d.name[4:])}
                           | {_label(f, "sub") for f in get(datatype="func")})
                          - {None})
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
        return get(task=task, subject=subjects, **query)

    bolds = files(datatype="func", suffix="bold", desc="preproc", space=space,
                  extension=[".nii.gz", ".nii"])
    masks = files(datatype="func", suffix="mask", desc="brain", space=space,
                  extension=[".nii.gz", ".nii"])
    confs = files(datatype="func", suffix="timeseries", desc="confounds", extension=".tsv")
    confjs = files(datatype="func", suffix="timeseries", desc="confounds", extension=".json")

    def imgkey(path: str) -> tuple:
        return (run_key(path), _label(path, "res"))

    mask_by = {imgkey(p): p for p in masks}
    conf_by = {run_key(p): p for p in confs}
    confj_by = {run_key(p): p for p in confjs}

    by_run: dict[tuple[tuple[str, str], ...], list[str]] = {}
    for b in bolds:
        by_run.setdefault(run_key(b), []).append(b)

    runs: list[RunInputs] = []
    skipped: list[Skipped] = []
    def order(k: tuple[tuple[str, str], ...]) -> tuple:
        e = dict(k)  # as before: participant, session, task, acquisition, run, then the rest
        return (*(e.get(n) or "" for n in ("sub", "ses", "task", "acq", "run")), k)

    for k in sorted(by_run, key=order):
        ents = dict(k)
        sub, ses, acq, run = ents.get("sub"), ents.get("ses"), ents.get("acq"), ents.get("run")
        cands = by_run[k]
        if res is not None:
            cands = [c for c in cands if _label(c, "res") == str(res)]
            if not cands:
                skipped.append(Skipped(sub or "", ses, run, f"no BOLD with res-{res}"))
                continue
        if len(cands) > 1:  # this run only: the other runs and participants go on
            skipped.append(Skipped(sub or "", ses, run, (
                "fMRIPrep wrote this run at several resolutions ("
                + ", ".join(Path(c).name for c in cands) + "); choose one with `res:` in the "
                "config (e.g. res: '2')")))
            continue
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
        if not Path(bjson).is_file() and not Path(bjson).is_symlink():
            problems.append("BOLD sidecar JSON (RepetitionTime) missing")
        if problems:
            skipped.append(Skipped(sub or "", ses, run, f"{Path(bold).name}: " + "; ".join(problems)))
            continue
        assert mask is not None and conf is not None and confj is not None
        # unreadable, dangling or undecodable: this run is skipped with the file and the reason
        bad = [why for f, kind in ((bold, "nifti"), (mask, "nifti"), (conf, "file"),
                                   (confj, "json"), (bjson, "json"))
               if (why := input_problem(f, kind)) is not None]
        if bad:
            skipped.append(Skipped(sub or "", ses, run, bad[0]))
            continue
        extra = tuple((e, v) for e, v in k if e not in _NAMED_ENTITIES)
        runs.append(RunInputs(sub or "", ses, task, acq, run, bold, mask, conf, confj, bjson,
                              extra))

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
            other = sorted({m.group(1) for f in (root / f"sub-{s}").rglob("*_bold.nii*")
                            if (m := re.search(r"_space-([A-Za-z0-9]+)_", f.name))} - {space})
            found = (f"; found BOLD only in space {', '.join(other)}: set config space to it "
                     f"(if supported) or rerun fMRIPrep with --output-spaces {space}"
                     if other else "")
            skipped.append(Skipped(s, None, None, f"no preprocessed BOLD for task '{task}' in "
                                   f"space {space} (…_space-{space}_desc-preproc_bold.nii.gz)"
                                   + found))
    return runs, skipped


@dataclass(frozen=True)
class AnatInputs:
    """The anatomical inputs of the native-space (T1w) step for one participant/session.

    Attributes
    ----------
    t1w : str
        fMRIPrep ``…_desc-preproc_T1w.nii.gz`` (the image the navigator must load).
    mask : str
        ``…_desc-brain_mask.nii.gz`` on the T1w grid.
    xfm_mni_to_t1w_points : str
        ``…_from-T1w_to-MNI152NLin2009cAsym_mode-image_xfm.h5``: resamples T1w images into MNI,
        hence maps MNI *points* to T1w points (used to move the targets).
    xfm_t1w_to_mni_points : str
        ``…_from-MNI152NLin2009cAsym_to-T1w_mode-image_xfm.h5`` (used for a round-trip check).
    """

    t1w: str
    mask: str
    xfm_mni_to_t1w_points: str
    xfm_t1w_to_mni_points: str

    def to_dict(self) -> dict[str, str]:
        """Plain-dict view."""
        return asdict(self)


def discover_anat(fmriprep_dir: str | Path, participant: str, session: str | None,
                  space: str = "MNI152NLin2009cAsym") -> tuple[AnatInputs | None, str | None]:
    """Find the T1w, brain mask and the two MNI transforms of a participant (and session).

    fMRIPrep writes them to ``sub-X/anat/`` (one anatomical reference per participant) or, for a
    single-session participant with sessions, possibly to ``sub-X/ses-Y/anat/``; the session
    folder is tried first. Files with a ``space-`` entity (T1w resampled to a template) are
    ignored.

    Parameters
    ----------
    fmriprep_dir : str or Path
        fMRIPrep derivatives root.
    participant, session : str
        Labels without ``sub-``/``ses-`` (``session`` may be None).
    space : str
        Template space of the targets.

    Returns
    -------
    anat : AnatInputs or None
        The four files, or None when something is missing or ambiguous.
    reason : str or None
        Why ``anat`` is None (for skipped.tsv).
    """
    root = Path(fmriprep_dir)
    folders = ([root / f"sub-{participant}" / f"ses-{session}" / "anat"] if session else [])
    folders.append(root / f"sub-{participant}" / "anat")
    wanted = {
        "t1w": "_desc-preproc_T1w.nii",
        "mask": "_desc-brain_mask.nii",
        "xfm_mni_to_t1w_points": f"_from-T1w_to-{space}_mode-image_xfm.h5",
        "xfm_t1w_to_mni_points": f"_from-{space}_to-T1w_mode-image_xfm.h5",
    }
    problems: list[str] = []
    for folder in folders:
        if not folder.is_dir():
            continue
        found: dict[str, str] = {}
        problems = []
        names = sorted(p.name for p in folder.iterdir() if p.is_file() or p.is_symlink())
        for key, pattern in wanted.items():
            cands = [n for n in names if n.startswith(f"sub-{participant}_") and pattern in n
                     and n.endswith((".nii", ".nii.gz", ".h5")) and "_space-" not in n]
            if not cands:
                problems.append(f"no …{pattern}{'.gz' if pattern.endswith('.nii') else ''}")
            elif len(cands) > 1:
                problems.append(f"several candidates for …{pattern} ({', '.join(cands)})")
            else:
                found[key] = str(folder / cands[0])
        if not problems:
            # unreadable, dangling or undecodable: named with the reason (MNI targets go on)
            bad = [why for key, f in found.items()
                   if (why := input_problem(f, "nifti" if f.endswith((".nii", ".nii.gz"))
                                            else "file")) is not None]
            if bad:
                return None, f"native/T1w export skipped (MNI targets still computed): {bad[0]}"
            return AnatInputs(**{k: str(Path(f).resolve()) for k, f in found.items()}), None
        if found:  # this folder holds the anatomy but incompletely: report it, no fallback
            break
    where = ", ".join(str(f.relative_to(root)) for f in folders)
    detail = "; ".join(problems) if problems else "no anat/ folder"
    return None, (f"native/T1w export skipped (MNI targets still computed): {detail} in {where}. "
                  "Provide fMRIPrep's anat/ outputs (desc-preproc_T1w, desc-brain_mask and both "
                  f"{space} transforms) to get navigator files.")
