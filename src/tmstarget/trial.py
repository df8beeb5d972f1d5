"""Trial mode: allocation, blinded navigator exports and pre/post engagement at the target.

Three parts, each usable without the workflow:

* **Allocation** (:func:`load_or_create_allocation`): either a TSV from the trial's own
  randomisation (``participant_id``, ``arm``), or a seeded permuted-block randomisation that is
  written once to the unblinded folder and only ever *extended*: a rerun reads the existing file,
  and new participants get the next positions of the same seeded sequence, so adding
  participants never changes an existing allocation.
* **Blinded export** (:func:`write_blinded`): one navigator target named ``"Target"`` in every
  format of :data:`tmstarget.navigation.ALL_FORMATS`, rendered by the low-level writers with
  neutral names and comments, positions quantised to the same precision in either arm, plus a
  technician sheet with the checks of SAFETY.md. :func:`reveal_scan` lists anything in a file
  that would reveal the arm.
* **Engagement** (:func:`engagement`): the seed (sgACC) correlation in a small sphere at the
  target in a session, over the whole session and in each half, and :func:`engagement_change`
  for pre -> post.
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from . import navigation as nav
from .errors import InputError

#: Name every blinded navigator file gives its target.
BLINDED_NAME = "Target"
#: Neutral point descriptions (target, entry) in the blinded Slicer files.
_BLINDED_DESC = ("target point", "entry point")
#: Positions in blinded files are rounded to this many mm decimals (same in every arm).
POSITION_DECIMALS = 2

#: Technician checks (from SAFETY.md), identical for every arm.
TECHNICIAN_CHECKS: tuple[str, ...] = (
    "Load the navigator file together with the participant's own T1w image named in the file "
    "(the file records its name and SHA-256); refuse a file planned on a different image.",
    "Check left/right on the loaded image against a known marker (e.g. a vitamin-E capsule or "
    "the participant's known asymmetry) before treating.",
    "Check the target lies on the brain surface under the coil on the navigator's display and the "
    "coil handle orientation is plausible; report anything unexpected to the trial team "
    "without guessing why.",
    "Register the head with the navigator's own fiducial procedure and check the registration "
    "error the navigator reports before every session.",
    "Apply the motor-threshold and dose procedure of the trial protocol; this file sets only "
    "where the coil goes.",
    "Research software, not a medical device: the treating clinician decides.",
)


# ------------------------------------------------------------------------------------------
# Configuration
# ------------------------------------------------------------------------------------------

_DEFAULTS: dict[str, Any] = {
    "enabled": False,
    "arms": {},
    "allocation_file": None,
    "seed": None,
    "block_size": 4,
    "engagement": None,
    "engagement_radius_mm": 6.0,
    "unblind": False,
}


def settings(cfg: Mapping[str, Any] | None) -> dict[str, Any]:
    """The ``trial:`` configuration with defaults filled in and checked.

    Raises
    ------
    InputError
        When trial mode is on without two arms, or the block size is not a multiple of the
        number of arms, or neither an allocation file nor a seed is given.
    """
    out = dict(_DEFAULTS)
    out.update(dict(cfg or {}))
    if not out["enabled"]:
        return out
    arms = dict(out["arms"] or {})
    if len(arms) < 2:
        raise InputError(None, f"trial.arms has {len(arms)} arm(s).",
                         "Give at least two arms, e.g. {connectivity: cluster, scalp: beam_f3}.")
    out["arms"] = arms
    n = len(arms)
    if int(out["block_size"]) <= 0 or int(out["block_size"]) % n:
        raise InputError(None, f"trial.block_size {out['block_size']} is not a positive multiple "
                         f"of the {n} arms.", "Use e.g. 2 x the number of arms.")
    if not out["allocation_file"] and out["seed"] is None:
        raise InputError(None, "trial mode needs trial.allocation_file or trial.seed.",
                         "Give the trial's randomisation TSV, or a seed for a block randomisation.")
    eng = out.get("engagement")
    if eng is not None and (not isinstance(eng, Mapping) or set(eng) != {"pre", "post"}):
        raise InputError(None, f"trial.engagement must be {{pre: <session>, post: <session>}}, "
                         f"got {eng!r}.", "Give the two session labels.")
    return out


# ------------------------------------------------------------------------------------------
# Allocation
# ------------------------------------------------------------------------------------------

ALLOCATION_COLUMNS = ("participant_id", "position", "code", "arm")


def arm_codes(arms: Sequence[str], seed: int | None) -> dict[str, str]:
    """Neutral allocation codes (``"A"``, ``"B"``, ...) for the arms, in a seeded order.

    With a seed the letters are a seeded permutation (so the config order does not tell the
    code); without one (user allocation TSV) the letters follow the config order.
    """
    arms = list(arms)
    letters = [chr(ord("A") + i) for i in range(len(arms))]
    if seed is not None:
        order = np.random.default_rng([int(seed), 0xC0DE]).permutation(len(arms))
        letters = [letters[i] for i in order]
    return dict(zip(arms, letters))


def block_sequence(arms: Sequence[str], seed: int, block_size: int, n: int) -> list[str]:
    """First ``n`` arms of the seeded permuted-block sequence.

    Block ``k`` is a permutation of ``block_size / len(arms)`` copies of each arm drawn from a
    generator seeded by ``(seed, k)``, so the first ``n`` entries never depend on ``n``.
    """
    arms = list(arms)
    per = block_size // len(arms)
    out: list[str] = []
    k = 0
    while len(out) < n:
        rng = np.random.default_rng([int(seed), k])
        block = [a for a in arms for _ in range(per)]
        out.extend(block[i] for i in rng.permutation(len(block)))
        k += 1
    return out[:n]


def _read_tsv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def _write_tsv(path: Path, rows: Iterable[Mapping[str, Any]], cols: Sequence[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(cols), delimiter="\t", lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({c: r[c] for c in cols})
    os.replace(tmp, path)


def load_or_create_allocation(participants: Sequence[str], cfg: Mapping[str, Any],
                              key_path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The allocation of every participant, read or extended, never redrawn.

    Parameters
    ----------
    participants : sequence of str
        Participant labels (without ``sub-``), in any order.
    cfg : mapping
        :func:`settings` output.
    key_path : path-like
        The unblinding key TSV (``participant_id``, ``position``, ``code``, ``arm``) in the
        unblinded folder. With ``trial.allocation_file`` it is rewritten from that file; with a
        seed it is read when present and only rows for new participants are appended.

    Returns
    -------
    list of dict
        One row per participant (sorted by position).
    """
    arms = list(cfg["arms"])
    key_path = Path(key_path)
    codes = arm_codes(arms, cfg.get("seed"))
    wanted = sorted(set(participants))
    if cfg.get("allocation_file"):
        src = Path(cfg["allocation_file"])
        if not src.is_file():
            raise InputError(src, "the trial allocation file does not exist.",
                             "Fix trial.allocation_file.")
        rows = _read_tsv(src)
        if not rows or not {"participant_id", "arm"} <= set(rows[0]):
            raise InputError(src, "needs columns participant_id and arm.",
                             "Add a header row: participant_id<TAB>arm.")
        given: dict[str, str] = {}
        for r in rows:
            pid = r["participant_id"].strip().removeprefix("sub-")
            arm = r["arm"].strip()
            if arm not in codes:
                raise InputError(src, f"arm {arm!r} of sub-{pid} is not one of trial.arms "
                                 f"{arms}.", "Use the arm names of trial.arms.")
            if pid in given and given[pid] != arm:
                raise InputError(src, f"sub-{pid} is allocated twice.", "Keep one row.")
            given[pid] = arm
        missing = [p for p in wanted if p not in given]
        if missing:
            raise InputError(src, f"no allocation for sub-{', sub-'.join(missing)}.",
                             "Add them from the trial's randomisation, or exclude them.")
        out = [{"participant_id": p, "position": i + 1, "code": codes[given[p]],
                "arm": given[p]} for i, p in enumerate(sorted(given))]
        _write_tsv(key_path, out, ALLOCATION_COLUMNS)
        return out
    existing: list[dict[str, Any]] = []
    if key_path.is_file():
        for r in _read_tsv(key_path):
            if r.get("arm") not in codes:
                raise InputError(key_path, f"the existing allocation names arm {r.get('arm')!r}, "
                                 f"not one of trial.arms {arms}.",
                                 "Restore the trial configuration the allocation was drawn for; "
                                 "never delete an allocation in use.")
            existing.append({"participant_id": r["participant_id"],
                             "position": int(r["position"]), "code": r["code"],
                             "arm": r["arm"]})
    known = {r["participant_id"] for r in existing}
    new = [p for p in wanted if p not in known]
    if not new and existing:
        return sorted(existing, key=lambda r: r["position"])
    seq = block_sequence(arms, int(cfg["seed"]), int(cfg["block_size"]), len(existing) + len(new))
    for r in existing:  # the seeded sequence must still produce the stored rows
        if seq[r["position"] - 1] != r["arm"]:
            raise InputError(key_path, f"sub-{r['participant_id']} is stored in arm {r['arm']} but "
                             "the seeded sequence gives another arm (seed, arms or block size "
                             "changed).", "Restore trial.seed/arms/block_size; the stored "
                             "allocation is kept.")
    start = len(existing)
    rows = existing + [{"participant_id": p, "position": start + i + 1,
                        "code": codes[seq[start + i]], "arm": seq[start + i]}
                       for i, p in enumerate(new)]
    _write_tsv(key_path, rows, ALLOCATION_COLUMNS)
    return rows


# ------------------------------------------------------------------------------------------
# Blinded export
# ------------------------------------------------------------------------------------------


def pose_from_record(rec: Mapping[str, Any]) -> nav.CoilPose:
    """Rebuild a :class:`~tmstarget.navigation.CoilPose` from a ``_coilpose.json`` record."""
    return nav.CoilPose(
        matrix=np.asarray(rec["coil_matrix"], float),
        target_mm=np.asarray(rec["target_mm"], float),
        entry_mm=np.asarray(rec["entry_mm"], float),
        name=str(rec["name"]),
        image_name=rec["image_name"],
        image_sha256=rec["image_sha256"],
        image_shape=tuple(rec["image_shape"]),
        qform_code=int(rec["qform_code"]),
        sform_code=int(rec["sform_code"]),
        qform=np.asarray(rec["qform"], float),
        sform=np.asarray(rec["sform"], float),
        space=rec.get("space", "T1w"),
    )


def blinded_pose(pose: nav.CoilPose) -> nav.CoilPose:
    """The pose named ``"Target"`` with positions rounded to :data:`POSITION_DECIMALS`.

    The rounding moves the target, entry and coil centre by at most 0.01 mm and gives every
    arm the same coordinate precision; the rotation is kept exactly.
    """
    m = pose.matrix.copy()
    m[:3, 3] = np.round(m[:3, 3], POSITION_DECIMALS)
    # every text the writers take from a pose is reset: labels and notes name the method
    return replace(pose, name=BLINDED_NAME, target_label=None, entry_label=None, note="",
                   matrix=m,
                   target_mm=np.round(pose.target_mm, POSITION_DECIMALS),
                   entry_mm=np.round(pose.entry_mm, POSITION_DECIMALS))


def blinded_prefix(participant_id: str, session_id: str | None) -> str:
    """``sub-X[_ses-Y]_space-T1w_desc-blinded`` (the same in every arm)."""
    ses = f"_ses-{session_id}" if session_id else ""
    return f"sub-{participant_id}{ses}_space-T1w_desc-blinded"


def blinded_dir(output_dir: str | os.PathLike[str], participant_id: str,
                session_id: str | None) -> Path:
    """``OUTPUT_DIR/blinded/sub-X[/ses-Y]``."""
    d = Path(output_dir) / "blinded" / f"sub-{participant_id}"
    return d / f"ses-{session_id}" if session_id else d


#: File names (after the prefix) of one blinded export, identical in every arm.
BLINDED_SUFFIXES: tuple[str, ...] = tuple(nav.ALL_FORMATS.values()) + (
    "_technician.txt", "_technician.json")


def _technician_text(pid: str, ses: str | None, code: str, pose: nav.CoilPose,
                     files: Sequence[str]) -> str:
    t = pose.target_mm
    e = pose.entry_mm
    lines = [
        "tmstarget blinded technician sheet (research use only; not a medical device)",
        f"Participant: sub-{pid}" + (f"  Session: ses-{ses}" if ses else ""),
        f"Image: {pose.image_name} (sha256 {pose.image_sha256})",
        f"Target (RAS mm, T1w world): {t[0]:.2f} {t[1]:.2f} {t[2]:.2f}",
        f"Entry (RAS mm, T1w world): {e[0]:.2f} {e[1]:.2f} {e[2]:.2f}",
        "",
        "Checks before every session:",
        *[f"  {i + 1}. {c}" for i, c in enumerate(TECHNICIAN_CHECKS)],
        "",
        "Files:",
        *[f"  {f}" for f in files],
    ]
    return "\n".join(lines) + "\n"


def write_blinded(pose: nav.CoilPose, t1w_path: str | os.PathLike[str],
                  output_dir: str | os.PathLike[str], participant_id: str,
                  session_id: str | None, code: str, *, sphere_radius_mm: float = 5.0,
                  localite_space: str = "RAS") -> dict[str, Path]:
    """Write the blinded navigator files and technician sheet of one participant.

    Everything is rendered by the low-level writers of :mod:`tmstarget.navigation` with the
    neutral name ``"Target"`` and neutral point descriptions, into
    ``OUTPUT_DIR/blinded/sub-X[/ses-Y]/``; nothing names the arm, method or any statistic.
    ``code`` (the neutral allocation code) is *not* written: a technician who saw codes could
    group participants by arm; it goes to the unblinded record only.
    """
    bp = blinded_pose(pose)
    img, _ = nav._load_matching_t1w(bp, t1w_path)
    rendered: dict[str, bytes] = {
        "brainsight": nav._render_brainsight(bp, 14),
        "brainsight_v12": nav._render_brainsight(bp, 12),
        "localite_instrument_markers": nav._render_localite_instrument(bp, localite_space),
        "localite_entry_target": nav._render_localite_entry_target(bp, localite_space),
        "ant_mrk": nav._render_ant(bp),
        "slicer_mrk_json": nav._render_slicer_json(
            bp, descriptions=_BLINDED_DESC, markup_description=bp.provenance),
        "fcsv": nav._render_fcsv(bp, descriptions=_BLINDED_DESC),
        "csv": nav._render_csv(bp),
        "json": nav._render_json(bp),
        "nifti_sphere": nav._render_sphere(bp, img, sphere_radius_mm),
    }
    prefix = blinded_prefix(participant_id, session_id)
    names = [prefix + s for s in BLINDED_SUFFIXES]
    rendered["technician_txt"] = _technician_text(
        participant_id, session_id, code, bp, names).encode("utf-8")
    rendered["technician_json"] = (json.dumps({
        "participant_id": f"sub-{participant_id}", "session_id": session_id and f"ses-{session_id}",
        "name": BLINDED_NAME, "space": bp.space,
        "image_name": bp.image_name, "image_sha256": bp.image_sha256,
        "target_mm": [round(float(v), POSITION_DECIMALS) for v in bp.target_mm],
        "entry_mm": [round(float(v), POSITION_DECIMALS) for v in bp.entry_mm],
        "checks": list(TECHNICIAN_CHECKS), "files": names,
    }, indent=2) + "\n").encode("utf-8")
    d = blinded_dir(output_dir, participant_id, session_id)
    keys = list(nav.ALL_FORMATS) + ["technician_txt", "technician_json"]
    return {k: nav._atomic_write_bytes(d / (prefix + s), rendered[k])
            for k, s in zip(keys, BLINDED_SUFFIXES)}


#: Words that would reveal an arm (matched case-insensitively, not inside hex/alphanumerics).
REVEAL_WORDS: tuple[str, ...] = (
    "f3", "beam", "eeg", "10-20", "10_20", "5cm", "5 cm", "five", "scalp", "fmri", "bold",
    "sgacc", "connectivity", "correlation", "anticorrelat", "cluster", "peak", "snt",
    "seedmap", "seed", "method", "arm", "verdict", "distance", "dlpfc", "mni", "hotspot",
    "r=", "stat-r", "zscore", "z-score", "fisher", "rule", "landmark", "nasion",
    "inion", "vertex", "cortical", "scalp-rule",
)


def reveal_scan(data: bytes, extra: Iterable[str] = ()) -> list[str]:
    """Words of :data:`REVEAL_WORDS` (and ``extra``) found in ``data``.

    gzip data (NIfTI) is decompressed first; the whole byte string (header, extensions and
    text) is searched. A word matches only when not flanked by letters or digits, so hex
    digests such as ``...af3b...`` do not count.
    """
    import gzip

    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    text = data.decode("latin-1").lower()
    hits = []
    for w in (*REVEAL_WORDS, *extra):
        if re.search(r"(?<![a-z0-9])" + re.escape(w.lower()) + r"(?![a-z0-9])", text):
            hits.append(w)
    return hits


def structure(data: bytes) -> str:
    """Text of a blinded file with every number replaced by ``#`` (to compare arms)."""
    import gzip

    if data[:2] == b"\x1f\x8b":
        hdr = bytearray(gzip.decompress(data)[:352])
        return f"nifti header {len(hdr)} bytes, data elided"
    return re.sub(r"-?\d+(\.\d+)?(e[-+]?\d+)?", "#", data.decode("utf-8"))


# ------------------------------------------------------------------------------------------
# Engagement
# ------------------------------------------------------------------------------------------


def sphere_mask(shape: Sequence[int], affine: np.ndarray, centre_mm: Sequence[float],
                radius_mm: float) -> np.ndarray:
    """Boolean mask of voxels whose centres lie within ``radius_mm`` of ``centre_mm``."""
    ijk = np.indices(tuple(shape[:3])).reshape(3, -1).T.astype(float)
    xyz = ijk @ np.asarray(affine)[:3, :3].T + np.asarray(affine)[:3, 3]
    inside = np.linalg.norm(xyz - np.asarray(centre_mm, float), axis=1) <= radius_mm
    mask = inside.reshape(tuple(shape[:3]))
    if not mask.any():
        raise InputError(None, f"the {radius_mm} mm sphere at {list(centre_mm)} holds no voxel.",
                         "Increase trial.engagement_radius_mm or check the target.")
    return mask


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean()
    b = b - b.mean()
    den = float(np.sqrt((a * a).sum() * (b * b).sum()))
    if den == 0:
        raise InputError(None, "a constant time series has no correlation.",
                         "Check the seed and target voxels hold signal.")
    return float((a * b).sum() / den)


@dataclass(frozen=True)
class Engagement:
    """Seed correlation at the target in one session.

    ``r`` is the correlation of the seed time series with the mean time series of the target
    sphere over the whole session; ``r_half1``/``r_half2`` in each half (first and second half
    of the kept volumes in time). ``spread`` is ``|z_half1 - z_half2| / sqrt(2)``: for two
    independent halves ``E[spread**2]`` is the sampling variance of a *half*-session Fisher z,
    so ``spread`` estimates the standard error of a half session, about ``sqrt(2)`` times that of
    the whole-session z (a conservative noise scale that, unlike ``1/sqrt(n - 3)``, includes the
    data's autocorrelation). One split gives a single-degree-of-freedom estimate: judge single
    participants with care and pool across participants where possible.
    """

    r: float
    r_half1: float
    r_half2: float
    n_voxels: int
    n_volumes: int

    @property
    def z(self) -> float:
        return float(np.arctanh(np.clip(self.r, -0.999999, 0.999999)))

    @property
    def spread(self) -> float:
        z1, z2 = np.arctanh(np.clip([self.r_half1, self.r_half2], -0.999999, 0.999999))
        return float(abs(z1 - z2) / np.sqrt(2.0))


def engagement_of_series(seed_ts: np.ndarray, target_ts: np.ndarray, n_voxels: int,
                         keep: np.ndarray | None = None) -> Engagement:
    """:class:`Engagement` of a seed and a target time series (whole session and halves)."""
    seed_ts = np.asarray(seed_ts, float)
    target_ts = np.asarray(target_ts, float)
    keep = np.ones(seed_ts.shape[0], bool) if keep is None else np.asarray(keep, bool)
    s, t = seed_ts[keep], target_ts[keep]
    h = s.shape[0] // 2
    return Engagement(r=_corr(s, t), r_half1=_corr(s[:h], t[:h]), r_half2=_corr(s[h:], t[h:]),
                      n_voxels=int(n_voxels), n_volumes=int(s.shape[0]))


def engagement(seed_ts: np.ndarray, data: np.ndarray, affine: np.ndarray,
               target_mm: Sequence[float], radius_mm: float,
               keep: np.ndarray | None = None) -> Engagement:
    """Seed correlation at the target sphere of one session (whole session and halves).

    Parameters
    ----------
    seed_ts : ndarray, shape (T,)
        Cleaned seed (sgACC) mean time series.
    data : ndarray, shape (X, Y, Z, T)
        Cleaned BOLD data on ``affine``'s grid.
    target_mm : 3 floats
        The target carried from the pre session (same space as ``affine``).
    keep : ndarray of bool, shape (T,), optional
        Volumes kept after censoring (default all). Halves split the kept volumes.
    """
    mask = sphere_mask(data.shape, affine, target_mm, radius_mm)
    tgt = np.asarray(data, float)[mask].mean(axis=0)
    return engagement_of_series(seed_ts, tgt, int(mask.sum()), keep)


def engagement_change(pre: Engagement, post: Engagement) -> dict[str, float]:
    """Pre -> post change in r and Fisher z, with the split-half noise of the change."""
    noise = float(np.hypot(pre.spread, post.spread))
    dz = post.z - pre.z
    return {"r_pre": pre.r, "r_post": post.r, "delta_r": post.r - pre.r, "z_pre": pre.z,
            "z_post": post.z, "delta_z": dz, "spread_pre": pre.spread,
            "spread_post": post.spread, "delta_z_noise": noise,
            "delta_z_over_noise": float(dz / noise) if noise > 0 else float("inf")}


def cohort_table(rows: Sequence[Mapping[str, Any]], key: Sequence[Mapping[str, Any]],
                 unblind: bool) -> list[dict[str, Any]]:
    """Engagement rows with column ``arm``: the neutral code, or the arm name when unblinded."""
    by = {r["participant_id"]: r for r in key}
    out = []
    for r in rows:
        k = by[r["participant_id"]]
        out.append({"participant_id": r["participant_id"],
                    "arm": k["arm"] if unblind else k["code"], **{
                        c: v for c, v in r.items() if c not in ("participant_id", "arm")}})
    return sorted(out, key=lambda r: (str(r["arm"]), r["participant_id"]))


# ------------------------------------------------------------------------------------------
# Workflow step
# ------------------------------------------------------------------------------------------


def arm_source_desc(method: str) -> str:
    """``desc-`` label of the native export that holds an arm's pose (``target`` or a scalp rule)."""
    from .scalp import METHODS

    return METHODS[method][0] if method in METHODS else "target"


def blinded_step(coilpose_json: str | os.PathLike[str], t1w: str | os.PathLike[str],
                 output_dir: str | os.PathLike[str], participant_id: str,
                 session_id: str | None, code: str, arm: str, method: str,
                 unblinded_json: str | os.PathLike[str], sphere_radius_mm: float = 5.0,
                 localite_space: str = "RAS") -> dict[str, Any]:
    """Blinded files of one participant, and the unblinded record of what they hold."""
    try:
        rec = json.loads(Path(coilpose_json).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(coilpose_json, f"cannot read the arm's coil pose ({exc}).",
                         "Rerun the native step.") from exc
    pose = pose_from_record(rec)
    files = write_blinded(pose, t1w, output_dir, participant_id, session_id, code,
                          sphere_radius_mm=sphere_radius_mm, localite_space=localite_space)
    root = Path(output_dir)
    out = {
        "participant_id": f"sub-{participant_id}", "session_id": session_id and f"ses-{session_id}",
        "allocation_code": code, "arm": arm, "method": method,
        "source_export": str(Path(coilpose_json).resolve().relative_to(root.resolve()))
        if Path(coilpose_json).resolve().is_relative_to(root.resolve()) else str(coilpose_json),
        "source_name": rec.get("name"),
        "target_mm_blinded": [round(float(v), POSITION_DECIMALS) for v in pose.target_mm],
        "blinded_files": {k: str(p.relative_to(root)) for k, p in files.items()},
        "note": "UNBLINDED: keep away from the technician (OUTPUT_DIR/unblinded/).",
    }
    Path(unblinded_json).parent.mkdir(parents=True, exist_ok=True)
    nav._atomic_write_bytes(unblinded_json, (json.dumps(out, indent=2) + "\n").encode("utf-8"))
    return out


# ------------------------------------------------------------------------------------------
# Engagement workflow steps
# ------------------------------------------------------------------------------------------

#: Columns of the per-participant engagement table ``sub-X_task-T_desc-engagement_stat.tsv``
#: (later columns may be added, never removed or reordered).
ENGAGEMENT_COLUMNS: tuple[str, ...] = (
    "participant_id", "pre_session_id", "post_session_id", "method", "x", "y", "z", "space",
    "radius_mm", "r_pre", "r_post", "delta_r", "z_pre", "z_post", "delta_z", "spread_pre",
    "spread_post", "delta_z_noise", "delta_z_over_noise", "r_pre_half1", "r_pre_half2",
    "r_post_half1", "r_post_half2", "n_voxels_pre", "n_voxels_post", "n_volumes_pre",
    "n_volumes_post",
)

#: Column descriptions (BIDS sidecar ``Description``/``Units``) of :data:`ENGAGEMENT_COLUMNS`.
ENGAGEMENT_COLUMN_DOCS: dict[str, dict[str, str]] = {
    "participant_id": {"Description": "Participant label."},
    "pre_session_id": {"Description": "Session the target was chosen on (trial.engagement.pre)."},
    "post_session_id": {"Description": "Session after treatment (trial.engagement.post)."},
    "method": {"Description": "Connectivity targeting method whose pre-session target is used "
                              "(native.method; the same in every arm)."},
    "x": {"Description": "Target (sphere centre), pre-session target JSON.", "Units": "mm"},
    "y": {"Description": "Target (sphere centre), pre-session target JSON.", "Units": "mm"},
    "z": {"Description": "Target (sphere centre), pre-session target JSON.", "Units": "mm"},
    "space": {"Description": "Template space of x, y, z (RAS+ mm world coordinates)."},
    "radius_mm": {"Description": "Radius of the target sphere whose mean time series is "
                                 "correlated with the seed (trial.engagement_radius_mm).",
                  "Units": "mm"},
    "r_pre": {"Description": "Pearson r, seed vs target-sphere mean, whole pre session. "
                             "Measured on the data that chose the target: biased towards a "
                             "stronger anticorrelation (selection)."},
    "r_post": {"Description": "Pearson r, seed vs target-sphere mean, whole post session "
                              "(target carried from the pre session)."},
    "delta_r": {"Description": "r_post - r_pre (negative: more anticorrelated after)."},
    "z_pre": {"Description": "Fisher z of r_pre (arctanh)."},
    "z_post": {"Description": "Fisher z of r_post (arctanh)."},
    "delta_z": {"Description": "z_post - z_pre."},
    "spread_pre": {"Description": "|z(first half) - z(second half)| / sqrt(2) in the pre "
                                  "session: estimates the standard error of a half-session z "
                                  "(about sqrt(2) x that of the whole session; conservative)."},
    "spread_post": {"Description": "As spread_pre, post session."},
    "delta_z_noise": {"Description": "sqrt(spread_pre^2 + spread_post^2): split-half noise scale "
                                     "of delta_z (conservative, one degree of freedom each)."},
    "delta_z_over_noise": {"Description": "delta_z / delta_z_noise."},
    "r_pre_half1": {"Description": "r in the first half (in time) of the pre session's kept "
                                   "volumes."},
    "r_pre_half2": {"Description": "r in the second half of the pre session's kept volumes."},
    "r_post_half1": {"Description": "r in the first half of the post session's kept volumes."},
    "r_post_half2": {"Description": "r in the second half of the post session's kept volumes."},
    "n_voxels_pre": {"Description": "In-brain voxels of the target sphere, pre session grid."},
    "n_voxels_post": {"Description": "In-brain voxels of the target sphere, post session grid."},
    "n_volumes_pre": {"Description": "Kept (uncensored) volumes, pre session."},
    "n_volumes_post": {"Description": "Kept (uncensored) volumes, post session."},
}

ENGAGEMENT_NOTE = ("Research readout, not a clinical measure: the change in seed (sgACC) "
                   "correlation at the target between two sessions, with its split-half noise. "
                   "It does not show that stimulation reached the target or that a participant "
                   "responds to treatment (SAFETY.md).")

SELECTION_NOTE = ("The target was chosen on the pre session's own data as the most "
                  "anticorrelated spot, so r_pre is biased towards a stronger anticorrelation "
                  "and a change towards zero (delta_r > 0) is expected without any treatment "
                  "effect (regression to the mean). Compare arms, or a sham/no-treatment "
                  "interval, rather than reading delta_r alone.")


def primary_method(target_json: Mapping[str, Any], native_method: str | None) -> str:
    """The connectivity method the native step exports (as :func:`tmstarget.native`)."""
    targets = dict(target_json["targets"])
    return native_method or ("cluster" if "cluster" in targets else next(iter(targets)))


def _combined_session(npz_paths: Sequence[str | os.PathLike[str]], cfg: Mapping[str, Any]
                      ) -> tuple[Any, np.ndarray, str, list[dict[str, Any]]]:
    """Denoised runs of one session: combined data, seed series, seed text, image inputs."""
    from .denoise import load_denoised
    from .pipeline import data_space
    from .seedmap import combine_runs, seed_timeseries, seed_weights

    runs = []
    for p in npz_paths:
        try:
            runs.append(load_denoised(p))
        except (OSError, ValueError, KeyError) as exc:
            raise InputError(p, f"cannot read the denoised run ({exc}).",
                             "Delete it and rerun: the denoise step rewrites it.") from exc
    combined = combine_runs(runs, [str(p) for p in npz_paths])
    weights, desc = seed_weights(cfg["seed"], combined.shape, combined.affine, data_space(cfg))
    ts, _ = seed_timeseries(combined, weights, str(cfg["seed"].get("file") or "sgACC seed"))
    inputs = [i for r in runs for i in (r.qc.get("inputs") or [])]
    return combined, ts, desc, inputs


def engagement_at(combined: Any, seed_ts: np.ndarray, target_mm: Sequence[float],
                  radius_mm: float, source: str | os.PathLike[str] | None = None) -> Engagement:
    """:class:`Engagement` on combined denoised data (:class:`tmstarget.seedmap.CombinedData`).

    The sphere holds the session's in-brain voxels whose centres lie within ``radius_mm`` of
    ``target_mm`` (world mm of the data's grid).
    """
    a = np.asarray(combined.affine, float)
    xyz = np.asarray(combined.voxels, float) @ a[:3, :3].T + a[:3, 3]
    inside = np.linalg.norm(xyz - np.asarray(target_mm, float), axis=1) <= float(radius_mm)
    if not inside.any():
        raise InputError(source, f"no brain voxel of this session lies within {radius_mm:g} mm "
                         f"of the target ({', '.join(f'{v:.1f}' for v in target_mm)}) mm.",
                         "Check that the sessions are of the same participant and in the same "
                         "template space, or increase trial.engagement_radius_mm.")
    tgt = np.asarray(combined.data[:, inside], dtype=np.float64).mean(axis=1)
    return engagement_of_series(seed_ts, tgt, int(inside.sum()))


def _file_record(path: str | os.PathLike[str], root: Path) -> dict[str, str]:
    from .io import sha256sum

    p = Path(path).resolve()
    rel = str(p.relative_to(root.resolve())) if p.is_relative_to(root.resolve()) else str(path)
    return {"path": rel, "sha256": sha256sum(path)}


def engagement_step(pre_npz: Sequence[str | os.PathLike[str]],
                    post_npz: Sequence[str | os.PathLike[str]],
                    pre_target_json: str | os.PathLike[str],
                    pre_map: str | os.PathLike[str], post_map: str | os.PathLike[str],
                    participant: str, pre_session: str, post_session: str,
                    cfg: Mapping[str, Any], out_tsv: str | os.PathLike[str],
                    out_json: str | os.PathLike[str],
                    output_root: str | os.PathLike[str]) -> dict[str, Any]:
    """Pre/post engagement of one participant: the pre-session target carried to the post session.

    Reads the pre session's target JSON (primary connectivity method, ``native.method``) and the
    denoised runs of both sessions (the denoise step's outputs; nothing is cleaned again),
    computes the seed correlation with the target sphere's mean time series in each session,
    its change and the split-half spread of each, and writes a one-row TSV and its JSON sidecar
    (column descriptions, coordinates with space and convention, SHA-256 of every image).
    """
    from . import CONVENTION
    from .io import write_json, write_text
    from .pipeline import data_space, software_versions

    try:
        tj = json.loads(Path(pre_target_json).read_text(encoding="utf-8"))
        targets = tj["targets"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(pre_target_json, f"cannot read the pre session's target JSON ({exc}).",
                         "Delete it and rerun: the target step rewrites it.") from exc
    method = primary_method(tj, (cfg.get("native") or {}).get("method"))
    if method not in targets:
        raise InputError(pre_target_json, f"native.method '{method}' was not computed on the "
                         f"pre session (methods: {', '.join(targets)}).",
                         "Set native.method to one of target.methods.")
    t = targets[method]
    if t.get("status", "ok") != "ok":
        raise InputError(pre_target_json, f"the pre session (ses-{pre_session}) has no "
                         f"{method} target ({t.get('status')}): there is no target to carry "
                         "to the post session.", "Inspect the pre session's seed map and "
                         "search region; exclude the participant from the engagement table "
                         "(exclude_participants) if the session is unusable.")
    space = str(t.get("space") or tj.get("space") or data_space(cfg))
    if space != data_space(cfg):
        raise InputError(pre_target_json, f"the target is in {space}, the data in "
                         f"{data_space(cfg)}.", "Rerun the target step with the current config.")
    xyz = [float(t["x"]), float(t["y"]), float(t["z"])]
    radius = float(cfg["trial"]["engagement_radius_mm"])
    res: dict[str, Engagement] = {}
    sessions: dict[str, Any] = {}
    for label, ses, npz in (("pre", pre_session, pre_npz), ("post", post_session, post_npz)):
        combined, ts, seed_desc, inputs = _combined_session(npz, cfg)
        res[label] = engagement_at(combined, ts, xyz, radius, npz[0] if npz else None)
        sessions[label] = {
            "session_id": f"ses-{ses}", "grid_shape": list(combined.shape),
            "grid_affine": np.asarray(combined.affine, float).round(6).tolist(),
            "run_lengths": list(combined.run_lengths), "seed": seed_desc,
            "denoised_runs": [str(Path(p).name) for p in npz], "images": inputs,
        }
    ch = engagement_change(res["pre"], res["post"])
    pre, post = res["pre"], res["post"]
    row: dict[str, Any] = {
        "participant_id": f"sub-{participant}", "pre_session_id": f"ses-{pre_session}",
        "post_session_id": f"ses-{post_session}", "method": method,
        "x": xyz[0], "y": xyz[1], "z": xyz[2], "space": space, "radius_mm": radius,
        **{k: ch[k] for k in ("r_pre", "r_post", "delta_r", "z_pre", "z_post", "delta_z",
                              "spread_pre", "spread_post", "delta_z_noise",
                              "delta_z_over_noise")},
        "r_pre_half1": pre.r_half1, "r_pre_half2": pre.r_half2,
        "r_post_half1": post.r_half1, "r_post_half2": post.r_half2,
        "n_voxels_pre": pre.n_voxels, "n_voxels_post": post.n_voxels,
        "n_volumes_pre": pre.n_volumes, "n_volumes_post": post.n_volumes,
    }
    cells = [f"{row[c]:.6g}" if isinstance(row[c], float) else str(row[c])
             for c in ENGAGEMENT_COLUMNS]
    write_text(out_tsv, "\t".join(ENGAGEMENT_COLUMNS) + "\n" + "\t".join(cells) + "\n")
    root = Path(output_root)
    sidecar = {
        **ENGAGEMENT_COLUMN_DOCS,
        "Description": "Pre/post engagement at the target: sgACC seed correlation with the mean "
                       "time series of a sphere at the target chosen on the pre session, in "
                       "each session, its change and the split-half spread of each.",
        "ResearchUseOnly": ENGAGEMENT_NOTE,
        "SelectionBias": SELECTION_NOTE,
        "Target": {"method": method, "coordinates_mm": xyz, "space": space,
                   "convention": CONVENTION, "radius_mm": radius,
                   "chosen_on": f"ses-{pre_session}",
                   "target_json": _file_record(pre_target_json, root),
                   "target_json_reference_image": tj.get("reference_image")},
        "SplitHalf": "first vs second half in time of each session's kept volumes (the runs' "
                     "cleaned data concatenated); spread = |z1 - z2| / sqrt(2).",
        "Sessions": sessions,
        "Maps": {"pre": {**_file_record(pre_map, root), "space": space,
                         "description": "pre-session sgACC correlation map (seed_map step)"},
                 "post": {**_file_record(post_map, root), "space": space,
                          "description": "post-session sgACC correlation map (seed_map step); "
                                         "r_post is read off its data at the target sphere"}},
        "SoftwareVersions": software_versions(),
    }
    write_json(out_json, sidecar)
    print(f"[tmstarget] sub-{participant}: engagement at the ses-{pre_session} {method} target "
          f"({xyz[0]:.1f}, {xyz[1]:.1f}, {xyz[2]:.1f}) mm {space}: r {ch['r_pre']:.3f} -> "
          f"{ch['r_post']:.3f} (delta z {ch['delta_z']:+.3f}, split-half noise "
          f"{ch['delta_z_noise']:.3f})", flush=True)
    return row


#: Columns of the cohort engagement table (``arm`` is the allocation code until unblinded).
COHORT_ENGAGEMENT_COLUMNS: tuple[str, ...] = (
    "participant_id", "arm", "pre_session_id", "post_session_id", "r_pre", "r_post", "delta_r",
    "z_pre", "z_post", "delta_z", "delta_z_noise", "delta_z_over_noise", "n_volumes_pre",
    "n_volumes_post",
)


def engagement_cohort_step(tsvs: Sequence[str | os.PathLike[str]],
                           key_path: str | os.PathLike[str], unblind: bool,
                           skipped: Sequence[Mapping[str, str]],
                           out_tsv: str | os.PathLike[str],
                           out_json: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Cohort engagement table by arm: allocation codes only unless ``unblind``.

    ``skipped`` lists participants without both sessions (``participant_id``, ``reason``);
    they are recorded in the sidecar, not an error. The sidecar's per-arm summary (n, mean and
    SD of ``delta_z``) is keyed by the same code or name as the table.
    """
    from .io import write_json

    key_path = Path(key_path)
    if not key_path.is_file():
        raise InputError(key_path, "the allocation key is missing.",
                         "Rerun the workflow: planning writes or reads the key; never delete "
                         "the key of a running trial (restore it from the trial team's copy).")
    key = [{**r, "participant_id": "sub-" + r["participant_id"].removeprefix("sub-")}
           for r in _read_tsv(key_path)]
    known = {r["participant_id"] for r in key}
    rows = []
    for p in tsvs:
        got = _read_tsv(Path(p))
        if len(got) != 1 or not set(COHORT_ENGAGEMENT_COLUMNS) - {"arm"} <= set(got[0]):
            raise InputError(p, "is not a one-row engagement table.",
                             "Delete it and rerun: the engagement step rewrites it.")
        r = got[0]
        if r["participant_id"] not in known:
            raise InputError(key_path, f"{r['participant_id']} has an engagement table but no "
                             "row in the allocation key.", "Restore the key from the trial "
                             "team's copy.")
        rows.append({c: r[c] for c in COHORT_ENGAGEMENT_COLUMNS if c != "arm"})
    table = cohort_table(rows, key, unblind)
    _write_tsv(Path(out_tsv), table, COHORT_ENGAGEMENT_COLUMNS)
    summary: dict[str, dict[str, Any]] = {}
    for arm in sorted({str(r["arm"]) for r in table}):
        dz = np.array([float(r["delta_z"]) for r in table if str(r["arm"]) == arm])
        summary[arm] = {"n": int(dz.size), "mean_delta_z": float(dz.mean()),
                        "sd_delta_z": float(dz.std(ddof=1)) if dz.size > 1 else None}
    write_json(out_json, {
        "Description": "Pre/post engagement at the target by arm (one row per participant with "
                       "both sessions; per-participant detail in "
                       "sub-X/func/sub-X_task-T_desc-engagement_stat.json).",
        "arm": {"Description": "Arm name (trial.unblind: true)" if unblind else
                "Neutral allocation code (blinded; the key is unblinded/trial_key.tsv)"},
        "Blinded": not unblind,
        "ByArm": summary,
        "Skipped": [dict(s) for s in skipped],
        "ResearchUseOnly": ENGAGEMENT_NOTE,
        "SelectionBias": SELECTION_NOTE,
    })
    return table
