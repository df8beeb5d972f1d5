"""Shared pytest fixtures (seeded, nilearn style)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
# every discovery in the tests (workflow subprocesses included) also indexes with pybids and
# fails if the fast index (tmstarget.discover._fast_index) gives another answer
os.environ.setdefault("TMSTARGET_CHECK_FAST_INDEX", "1")

# ANTsPy is the optional `preproc` extra (built-in preprocessing). Without it those tests skip,
# unless TMSTARGET_REQUIRE_PREPROC=1 (set by .ci/run) makes that a failure.
try:
    import ants  # noqa: F401

    HAVE_ANTS = True
except Exception:  # noqa: BLE001 - optional extra
    HAVE_ANTS = False
if not HAVE_ANTS and os.environ.get("TMSTARGET_REQUIRE_PREPROC") == "1":
    raise RuntimeError("TMSTARGET_REQUIRE_PREPROC=1 but ANTsPy (antspyx) cannot be imported: "
                       "pip install -e '.[preproc]'")
needs_ants = pytest.mark.skipif(not HAVE_ANTS, reason="ANTsPy not installed: "
                                "pip install 'tmstarget[preproc]'")


@pytest.fixture
def target_rng() -> np.random.Generator:
    """Seeded generator for target/seed-map tests."""
    return np.random.default_rng(20261124)


SAMPLE = REPO / "data_sample"


def tiny_file(path: Path) -> Path:
    """A minimal *valid* stand-in for a file the planner only inspects: a NIfTI header (a tiny
    2x2x2[x12] image), a JSON object, or an empty file. Planning reads image headers and JSON
    sidecars, so zero-byte images are (rightly) reported as unusable."""
    import nibabel as nb

    name = path.name
    if name.endswith((".nii", ".nii.gz")):
        shape = (2, 2, 2, 12) if "_bold" in name else (2, 2, 2)
        nb.save(nb.Nifti1Image(np.zeros(shape, np.uint8), np.diag([2.0, 2, 2, 1])), path)
    elif name.endswith(".json"):
        path.write_text('{"RepetitionTime": 2.0}' if "_bold" in name else "{}")
    else:
        path.touch()
    return path


def copy_sample_participant(dest: Path, participant: str = "sub-01") -> Path:
    """A one-participant fMRIPrep tree copied from ``data_sample/`` (the original stays untouched)."""
    import shutil

    dest.mkdir(parents=True)
    shutil.copy(SAMPLE / "dataset_description.json", dest)
    shutil.copytree(SAMPLE / participant, dest / participant)
    return dest


def _rot(axis: int, deg: float) -> np.ndarray:
    import math

    a = math.radians(deg)
    c, s = math.cos(a), math.sin(a)
    i, j = [k for k in range(3) if k != axis]
    r = np.eye(4)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


def storage_affine(orient: str, ras_base: np.ndarray, shape: tuple[int, int, int],
                   oblique_deg: tuple[float, float] = (15.0, -10.0)) -> np.ndarray:
    """Voxel-to-world affine storing the world box of ``ras_base`` in another voxel order.

    ``orient`` is ``RAS``, ``LAS``, ``LPS`` or ``oblique`` (rotated about x then z by
    ``oblique_deg`` around the box centre): laterality canaries use one per storage order.
    """
    n = np.array(shape) - 1
    if orient == "RAS":
        return ras_base.copy()
    if orient in ("LAS", "LPS"):
        flip = np.diag([-1.0, -1.0 if orient == "LPS" else 1.0, 1, 1])
        flip[0, 3] = n[0]
        if orient == "LPS":
            flip[1, 3] = n[1]
        return ras_base @ flip
    if orient == "oblique":
        centre = ras_base[:3, :3] @ (n / 2) + ras_base[:3, 3]
        t, ti = np.eye(4), np.eye(4)
        t[:3, 3], ti[:3, 3] = centre, -centre
        return t @ _rot(0, oblique_deg[0]) @ _rot(2, oblique_deg[1]) @ ti @ ras_base
    raise ValueError(orient)
