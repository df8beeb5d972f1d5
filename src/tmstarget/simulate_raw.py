"""Raw-BIDS twin of the simulated sample: native-space BOLD with known head motion.

The same signal model as :mod:`tmstarget.simulate` (planted sgACC-anticorrelated left-DLPFC
target, **simulated** BOLD on the **real** Colin27 anatomy), written as a *raw* BIDS dataset
a scanner export would give: ``anat/sub-XX_T1w.nii.gz`` and ``func/sub-XX_task-rest_bold.nii.gz``
in the participant's own (scanner) space, for the built-in preprocessing path
(:mod:`tmstarget.builtin`) to recover.

What is known (written under ``truth/``, listed in ``.bidsignore``):

* ``t1w_from_mni``: the 4x4 affine (rotation, translation **and** per-axis scaling) that maps
  simulation-MNI points to the participant's T1w/scanner world (RAS+ mm). The T1w image is
  the Colin27 head whose affine is ``t1w_from_mni @ colin_affine``.
* per-volume head motion: six parameters (trans mm, rot rad, extrinsic x-y-z rotations about
  ``motion_centre_mm`` in the scanner world) of the rigid map ``M_t`` that moves the head at
  volume ``t`` relative to its position in the T1w; BOLD voxel ``p`` at volume ``t`` shows the
  tissue at MNI point ``t1w_from_mni^-1 M_t^-1 p``.
* the planted target (MNI mm, as in ``truth.tsv`` of the derivative sample).

Signal model: :func:`tmstarget.simulate.simulate_run` with ``motion_gain=0`` (motion is
geometric here, not an intensity model).

Simplifications (say so wherever used): no susceptibility distortion, no slice timing, no
signal outside the brain mask (voxels outside the MNI brain are 0), no bias field in the T1w
beyond Colin27's own. "MNI" here is Colin27's world, which differs from the
MNI152NLin2009cAsym template anatomy by about 1-3 mm (measured with SyN, see the README).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from scipy import ndimage as ndi
from scipy.spatial.transform import Rotation

from tmstarget.simulate import (
    NSS_FACTORS,
    SIMULATOR_VERSION,
    SignalParams,
    _data_file,
    _make_grid,
    _quantize,
    _run_seed,
    _write_json,
    _write_text,
    reorient_storage,
    rigid_matrix,
    save_nifti,
    simulate_run,
)

__all__ = ["LANDMARKS", "RAW_SUBJECTS", "RawSubjectSpec", "make_raw_dataset",
           "motion_matrices"]

#: Motion parameter names (fMRIPrep's).
MOTION_COLUMNS = ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z")


#: Landmarks: name, position in the simulation frame (Colin27 world = "MNI" of the truth
#: files), and where Colin27's anatomy at that point lies in the MNI152NLin2009cAsym
#: *template* (reference: ANTs SyN of the unmoved Colin27 brain to the 1 mm template brain,
#: iterations 100/70/50/20 down to 1 mm, 737 s; ``scripts/make_landmark_reference.py``
#: recomputes it). The two differ by 0.8-3.2 mm: Colin27 is one person's anatomy, the
#: template an average. A correct normalisation of a participant's T1w maps the landmark
#: (placed in the T1w by the known affine) to the *template* position.
LANDMARKS: tuple[tuple[str, tuple[float, float, float], tuple[float, float, float]], ...] = (
    ("anterior_commissure", (0.0, 2.0, -4.0), (-0.65, 0.55, -5.07)),
    ("posterior_commissure", (0.0, -26.0, -2.0), (0.09, -28.77, -1.86)),
    ("target_sub-01", (-39.5, 36.5, 22.5), (-40.92, 34.66, 20.32)),
    ("target_sub-02", (-39.5, 12.5, 46.5), (-41.63, 10.34, 46.22)),
    ("target_sub-03", (-31.5, 24.5, 42.5), (-33.4, 22.95, 41.49)),
    ("left_hand_knob", (-37.0, -21.0, 58.0), (-37.81, -20.22, 57.82)),
    ("right_dlpfc", (40.0, 30.0, 30.0), (39.43, 31.48, 31.54)),
    ("posterior_cingulate", (0.0, -60.0, 20.0), (-0.46, -61.41, 17.88)),
    ("medial_prefrontal", (0.0, 50.0, 0.0), (-1.82, 49.83, -2.47)),
    ("left_parietal", (-30.0, -60.0, 50.0), (-30.64, -59.71, 50.3)),
    ("right_temporal", (30.0, -20.0, -20.0), (28.97, -21.93, -21.67)),
    ("left_insula", (-45.0, 10.0, 10.0), (-43.91, 10.28, 7.78)),
)


@dataclass(frozen=True)
class RawSubjectSpec:
    """One participant of the raw twin.

    Parameters
    ----------
    label : str
    target_mm : tuple of 3 float
        Planted target (MNI mm).
    rotation_deg, translation_mm, scale : tuple of 3 float
        ``t1w_from_mni = rigid(rotation, translation) @ diag(scale)``.
    bold_voxel_mm : float
        Native BOLD voxel size.
    bold_tilt_deg : float
        Oblique slice tilt of the BOLD grid about the left-right axis.
    bold_orientation, anat_orientation : str
        Storage orientation codes (flips only) of the images.
    drift_mm, drift_deg : float
        Amplitude of the slow head drift added to the random-walk motion.
    """

    label: str
    target_mm: tuple[float, float, float]
    rotation_deg: tuple[float, float, float] = (0.0, 0.0, 0.0)
    translation_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
    scale: tuple[float, float, float] = (1.0, 1.0, 1.0)
    bold_voxel_mm: float = 4.0
    bold_tilt_deg: float = 0.0
    bold_orientation: str = "LAS"
    anat_orientation: str = "RAS"
    drift_mm: float = 1.2
    drift_deg: float = 0.8

    @property
    def participant_id(self) -> str:
        return f"sub-{self.label}"

    @property
    def t1w_from_mni(self) -> np.ndarray:
        """4x4 affine from simulation-MNI world to T1w world (RAS+ mm)."""
        return rigid_matrix(self.rotation_deg, self.translation_mm) @ np.diag([*self.scale, 1.0])


#: Participants of ``data_sample_raw`` (targets as sub-01/sub-02 of ``data_sample``).
RAW_SUBJECTS: tuple[RawSubjectSpec, ...] = (
    RawSubjectSpec("01", (-39.5, 36.5, 22.5), rotation_deg=(8.0, -6.0, 10.0),
                   translation_mm=(12.0, -20.0, 25.0), scale=(1.04, 0.96, 1.03),
                   bold_tilt_deg=12.0, bold_orientation="LAS", anat_orientation="RAS"),
    RawSubjectSpec("02", (-39.5, 12.5, 46.5), rotation_deg=(-12.0, 9.0, -5.0),
                   translation_mm=(-25.0, 15.0, 18.0), scale=(0.97, 1.05, 0.98),
                   bold_tilt_deg=-8.0, bold_orientation="LPS", anat_orientation="LPS"),
)


def motion_matrices(params: np.ndarray, centre_mm: Sequence[float]) -> np.ndarray:
    """4x4 rigid maps of six motion parameters about a centre.

    Parameters
    ----------
    params : numpy.ndarray, shape (T, 6)
        trans_x/y/z (mm), rot_x/y/z (rad, extrinsic x-y-z).
    centre_mm : sequence of 3 float
        Rotation centre (RAS+ mm).

    Returns
    -------
    numpy.ndarray, shape (T, 4, 4)
    """
    params = np.atleast_2d(np.asarray(params, dtype=float))
    c = np.asarray(centre_mm, dtype=float)
    out = np.tile(np.eye(4), (params.shape[0], 1, 1))
    rot = Rotation.from_euler("xyz", params[:, 3:]).as_matrix()
    out[:, :3, :3] = rot
    out[:, :3, 3] = c - rot @ c + params[:, :3]
    return out


def _raw_motion(rng: np.random.Generator, n_t: int, n_nss: int, spec: RawSubjectSpec,
                base: np.ndarray) -> np.ndarray:
    """Random-walk + spikes (from the simulator) plus a slow smooth drift of known size."""
    t = np.linspace(0.0, 1.0, n_t)
    phase = rng.uniform(0, 2 * np.pi, 6)
    shape = np.stack([np.sin(np.pi * t * (1.0 + k / 3.0) + phase[k]) - np.sin(phase[k])
                      for k in range(6)], axis=1)
    amp = np.array([spec.drift_mm] * 3 + [np.deg2rad(spec.drift_deg)] * 3)
    drift = shape / np.maximum(np.abs(shape).max(axis=0), 1e-9) * amp * rng.uniform(0.6, 1.0, 6)
    params = base + drift
    params[:n_nss] = params[n_nss]
    return params - params[0]


def _bold_grid(spec: RawSubjectSpec) -> tuple[tuple[int, int, int], np.ndarray]:
    """Native BOLD grid: oblique (tilted) axial slab covering the head, in T1w world."""
    vs = spec.bold_voxel_mm
    shape = tuple(int(np.ceil(fov / vs)) for fov in (200.0, 220.0, 156.0))
    a = spec.t1w_from_mni
    centre = (a @ np.array([0.0, -18.0, 14.0, 1.0]))[:3]
    rot = Rotation.from_euler("x", spec.bold_tilt_deg, degrees=True).as_matrix()
    aff = np.eye(4)
    aff[:3, :3] = rot * vs
    aff[:3, 3] = centre - aff[:3, :3] @ ((np.array(shape) - 1) / 2.0)
    return shape, aff


def _native_series(data: np.ndarray, grid, spec: RawSubjectSpec, mats: np.ndarray,
                   shape: tuple[int, int, int], aff: np.ndarray) -> np.ndarray:
    """Sample each MNI-grid volume at the tissue positions seen by the moving head."""
    vol = np.zeros(grid.mask.shape, dtype=np.float32)
    ijk = np.indices(shape, dtype=np.float64).reshape(3, -1)
    world = aff[:3, :3] @ ijk + aff[:3, 3:4]
    to_grid = np.linalg.inv(grid.affine) @ np.linalg.inv(spec.t1w_from_mni)
    out = np.zeros((*shape, data.shape[0]), dtype=np.float32)
    # native voxels are 2x the simulation grid: average over the voxel (Gaussian PSF)
    sigma = max(spec.bold_voxel_mm / abs(grid.affine[0, 0]) / 2.355, 0.0)
    for t in range(data.shape[0]):
        vol[grid.mask] = data[t]
        src = ndi.gaussian_filter(vol, sigma) if sigma > 0 else vol
        m = to_grid @ np.linalg.inv(mats[t])
        pts = m[:3, :3] @ world + m[:3, 3:4]
        out[..., t] = ndi.map_coordinates(src, pts, order=1, mode="constant",
                                          cval=0.0).reshape(shape)
    return out


def _write_t1w(anat: Path, spec: RawSubjectSpec) -> None:
    colin = nib.load(_data_file("colin27_ch2_head.nii.gz"))
    head = np.asarray(colin.dataobj).astype(np.uint8)
    data, aff = reorient_storage(head, spec.t1w_from_mni @ colin.affine, spec.anat_orientation)
    img = nib.Nifti1Image(data, aff)
    img.header.set_data_dtype(np.uint8)
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(aff, code=1)
    img.set_sform(aff, code=1)
    save_nifti(img, anat / f"sub-{spec.label}_T1w.nii.gz")
    _write_json(anat / f"sub-{spec.label}_T1w.json", {
        "Modality": "MR", "Description": "Colin27 head (real anatomy) placed in a simulated "
        "scanner space by a known affine; see truth/."})


def make_raw_dataset(
    root: str | os.PathLike,
    subjects: Sequence[RawSubjectSpec] | None = None,
    n_volumes: int = 150,
    tr: float = 2.0,
    seed: int = 20241124,
    sim_voxel_mm: float = 2.0,
    clean: bool = False,
) -> pd.DataFrame:
    """Write the raw-BIDS twin and return its truth table.

    Parameters
    ----------
    root : str or os.PathLike
        Output folder (created).
    subjects : sequence of RawSubjectSpec, optional
        Default :data:`RAW_SUBJECTS`.
    n_volumes : int
        Volumes per run including the non-steady-state ones (brighter first volumes).
    tr : float
        Repetition time, s.
    seed : int
        Master seed.
    sim_voxel_mm : float
        Grid on which the signal is simulated before being sampled into native space.
    clean : bool
        Remove existing ``sub-*`` and ``truth`` folders first.

    Returns
    -------
    pandas.DataFrame
        One row per participant (also ``root/truth.tsv``).
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    if clean:
        for old in [*sorted(root.glob("sub-*")), root / "truth"]:
            if old.exists():
                shutil.rmtree(old)
    subjects = RAW_SUBJECTS if subjects is None else tuple(subjects)
    params = SignalParams(motion_gain=0.0)  # motion is geometric here, not an intensity model
    grid = _make_grid(sim_voxel_mm)
    n_nss = len(NSS_FACTORS)
    _write_json(root / "dataset_description.json", {
        "Name": "tmstarget simulated raw BIDS sample (SIMULATED BOLD on real anatomy)",
        "BIDSVersion": "1.9.0", "DatasetType": "raw",
        "GeneratedBy": [{"Name": "tmstarget-simulator", "Version": SIMULATOR_VERSION,
                         "Description": "raw-BIDS twin of data_sample: native-space SIMULATED "
                         "BOLD with known head motion; not real data"}],
        "License": "see LICENSES.md"})
    _write_text(root / ".bidsignore", "truth/\ntruth.tsv\n")
    rows, parts = [], []
    for si, spec in enumerate(subjects):
        rng = _run_seed(seed, 100 + si, 0, 0)
        data, base_motion = simulate_run(rng, grid, spec.target_mm, n_volumes, tr, params)
        motion = _raw_motion(rng, n_volumes, n_nss, spec, base_motion)
        centre = (spec.t1w_from_mni @ np.array([0.0, -18.0, 18.0, 1.0]))[:3]
        mats = motion_matrices(motion, centre)
        shape, aff = _bold_grid(spec)
        series = _native_series(data, grid, spec, mats, shape, aff)
        codes, slope = _quantize(series, step=1.0)
        codes, aff_s = reorient_storage(codes, aff, spec.bold_orientation)
        img = nib.Nifti1Image(codes, aff_s)
        img.header.set_data_dtype(np.int16)
        img.header.set_xyzt_units("mm", "sec")
        img.set_qform(aff_s, code=1)
        img.set_sform(aff_s, code=1)
        img.header.set_zooms((*img.header.get_zooms()[:3], float(tr)))
        func = root / spec.participant_id / "func"
        save_nifti(img, func / f"sub-{spec.label}_task-rest_bold.nii.gz", slope=slope,
                   compresslevel=9)
        _write_json(func / f"sub-{spec.label}_task-rest_bold.json", {
            "RepetitionTime": tr, "TaskName": "rest",
            "Description": "SIMULATED resting-state BOLD (tmstarget-simulator), native space "
                           "with known head motion; not real data. No slice timing or "
                           "distortion simulated."})
        _write_t1w(root / spec.participant_id / "anat", spec)
        tdir = root / "truth"
        df = pd.DataFrame(motion, columns=list(MOTION_COLUMNS))
        _write_text(tdir / f"sub-{spec.label}_task-rest_motion.tsv",
                    df.to_csv(sep="\t", index=False, float_format="%.8g", lineterminator="\n"))
        _write_json(tdir / f"sub-{spec.label}_truth.json", {
            "t1w_from_mni": np.round(spec.t1w_from_mni, 10).tolist(),
            "motion_centre_mm": np.round(centre, 6).tolist(),
            "motion_convention": "M_t = T(centre) R_xyz(rot) T(-centre) + trans; BOLD voxel p "
                                 "at volume t shows T1w point M_t^-1 p",
            "n_non_steady_state": n_nss, "target_mm": list(spec.target_mm),
            "space": "MNI152NLin2009cAsym (simulation frame = Colin27 world)"})
        excursion = np.abs(motion - motion[n_nss]).max(axis=0)
        rows.append({"participant_id": spec.participant_id, "x": spec.target_mm[0],
                     "y": spec.target_mm[1], "z": spec.target_mm[2],
                     "space": "MNI152NLin2009cAsym", "n_volumes": n_volumes, "tr": tr,
                     "n_non_steady_state": n_nss, "bold_voxel_mm": spec.bold_voxel_mm,
                     "max_trans_mm": round(float(excursion[:3].max()), 3),
                     "max_rot_deg": round(float(np.rad2deg(excursion[3:].max())), 3)})
        parts.append(f"{spec.participant_id}\n")
    _write_text(root / "participants.tsv", "participant_id\n" + "".join(parts))
    lm = pd.DataFrame([{"name": n, "x": a[0], "y": a[1], "z": a[2], "x_template": b[0],
                        "y_template": b[1], "z_template": b[2]} for n, a, b in LANDMARKS])
    _write_text(root / "truth" / "landmarks.tsv",
                lm.to_csv(sep="\t", index=False, lineterminator="\n"))
    _write_json(root / "truth" / "landmarks.json", {
        "name": {"Description": "Landmark name."},
        "x": {"Description": "Position in the simulation frame: Colin27's world, the 'MNI' "
                             "of truth.tsv (RAS+ mm). t1w_from_mni in sub-XX_truth.json places "
                             "it in each participant's T1w.", "Units": "mm"},
        "y": {"Description": "See x.", "Units": "mm"},
        "z": {"Description": "See x.", "Units": "mm"},
        "x_template": {"Description": "Where Colin27's anatomy at this landmark lies in the "
                                      "MNI152NLin2009cAsym template (RAS+ mm; careful 1 mm ANTs "
                                      "SyN of the unmoved Colin27, "
                                      "scripts/make_landmark_reference.py): where a correct "
                                      "normalisation maps it.", "Units": "mm"},
        "y_template": {"Description": "See x_template.", "Units": "mm"},
        "z_template": {"Description": "See x_template.", "Units": "mm"}})
    truth = pd.DataFrame(rows)
    _write_text(root / "truth.tsv", truth.to_csv(sep="\t", index=False, lineterminator="\n"))
    return truth


def read_truth(root: str | os.PathLike, label: str) -> tuple[dict, pd.DataFrame]:
    """Truth JSON and motion table of one participant of a raw twin."""
    root = Path(root)
    meta = json.loads((root / "truth" / f"sub-{label}_truth.json").read_text())
    motion = pd.read_csv(root / "truth" / f"sub-{label}_task-rest_motion.tsv", sep="\t")
    return meta, motion
