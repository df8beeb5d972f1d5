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
    return replace(pose, name=BLINDED_NAME, matrix=m,
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
    sphere over the whole session; ``r_half1``/``r_half2`` in each half; ``spread`` is
    ``|z_half1 - z_half2| / sqrt(2)``, the standard error of the whole-session Fisher z a
    split-half estimate gives (used to judge a change against the noise).
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
    seed_ts = np.asarray(seed_ts, float)
    keep = np.ones(seed_ts.shape[0], bool) if keep is None else np.asarray(keep, bool)
    mask = sphere_mask(data.shape, affine, target_mm, radius_mm)
    tgt = np.asarray(data, float)[mask].mean(axis=0)
    s, t = seed_ts[keep], tgt[keep]
    h = s.shape[0] // 2
    return Engagement(r=_corr(s, t), r_half1=_corr(s[:h], t[:h]), r_half2=_corr(s[h:], t[h:]),
                      n_voxels=int(mask.sum()), n_volumes=int(s.shape[0]))


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
