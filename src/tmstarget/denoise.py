"""Denoising of one fMRIPrep run: named confound strategies, scrubbing, band-pass, smoothing.

The temporal cleaning itself (which regressors, which volumes are censored, and the linear
cleaning operator that is right by construction) is :mod:`tmstarget.cleaning`. This module
applies it to a BOLD file without ever building the full voxel x time matrix in float64 and
without loading the whole 4D image at once:

* the run's cleaning is one linear operator ``L`` (kept volumes x volumes) shared by every
  voxel; with reproducibility on, the operators of the run's two halves -- each half cleaned
  as its own problem (:func:`tmstarget.cleaning.split_keep`) -- are stacked under it, so one
  pass over the file gives the full-run series and the two independent halves;
* the 4D file is streamed in chunks of volumes; each chunk is smoothed in space (smoothing acts
  on each volume independently), masked, and accumulated as ``Y += L[:, chunk] @ X_chunk``
  (in place, BLAS ``sgemm`` with ``beta=1``; the all-zero columns of ``L`` -- censored and
  non-steady-state volumes -- are skipped, so what those volumes hold is never read into the
  result);
* each part of ``Y`` (float32, rows x brain voxels) is then z-scored per voxel, in blocks.

Reading and smoothing (:class:`_VolumeStream`): a background thread decompresses the file once,
sequentially (ISA-L's ``igzip`` when the ``isal`` package is installed, else ``gzip``), into a
reused buffer of the on-disk dtype, applies ``scl_slope``/``scl_inter`` to float32, crops to the
brain mask's bounding box plus the kernel radius and does the first (x) smoothing pass; the
main thread does the y and z passes (only where later passes need them) and the product, so
decompression overlaps with computation. The Gaussian passes are nilearn's own
(``scipy.ndimage.gaussian_filter1d``, same sigma, truncation, order and border mode), so the
values inside the mask are those of smoothing the whole volume. Peak memory is ``Y`` plus a
few chunk buffers (see ``benchmarks/``).

``tests/test_denoise.py`` checks the result against a per-voxel implementation written in the
test from the method's description (plain numpy/scipy), against two properties any correct
scrubbing has (the content of a censored volume cannot matter; censoring the last volumes
equals deleting them), and -- for runs without censoring only -- against
``nilearn.maskers.NiftiMasker``.
"""

from __future__ import annotations

import gzip
import json
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import nibabel as nb
import numpy as np

from .cleaning import (STRATEGIES, Strategy, censoring, cleaning_operator, fd_summary,
                       read_confounds, read_confounds_metadata, resolve_strategy,
                       select_regressors, split_keep, stack_operators)
from .errors import InputError
from .inputcheck import grid_mismatch
from .io import atomic_write

__all__ = ["STRATEGIES", "Strategy", "DenoisedRun", "denoise_run", "load_denoised",
           "resolve_strategy", "save_denoised"]

#: Volumes read per chunk when streaming a 4D file.
CHUNK_VOLUMES = 50
#: Above this fraction of brain-mask voxels with a constant signal the run is refused.
MAX_CONSTANT_FRACTION = 0.10
#: Seconds spent in each stage by the last :func:`denoise_run` call (for benchmarks only; not
#: part of any output, so outputs stay byte-identical between runs).
LAST_TIMINGS: dict[str, float] = {}


@dataclass
class DenoisedRun:
    """One run after denoising.

    Attributes
    ----------
    data : numpy.ndarray
        float32 (kept volumes, voxels), each voxel z-scored (sample SD, ddof=1).
    voxels : numpy.ndarray
        int32 (voxels, 3) voxel indices, in ``numpy.nonzero`` (C) order.
    affine : numpy.ndarray
        4x4 voxel-to-MNI (RAS+ mm) affine of the BOLD grid.
    shape : tuple of int
        3D grid shape.
    kept : numpy.ndarray
        Indices of the retained volumes in the original run.
    tr : float
        Repetition time (s).
    qc : dict
        Quality numbers (volumes, censoring, FD, strategy, regressors, ...).
    halves : tuple of numpy.ndarray, optional
        The run's two halves, each cleaned as its own problem (not cut from ``data``), float32
        (volumes of the half, voxels), z-scored per voxel, same voxels as ``data``.
    kept_halves : tuple of numpy.ndarray, optional
        Indices (in the original run) of the volumes of each half.
    """

    data: np.ndarray
    voxels: np.ndarray
    affine: np.ndarray
    shape: tuple[int, int, int]
    kept: np.ndarray
    tr: float
    qc: dict[str, Any] = field(default_factory=dict)
    halves: tuple[np.ndarray, np.ndarray] | None = None
    kept_halves: tuple[np.ndarray, np.ndarray] | None = None


# --------------------------------------------------------------------------- validation
def _load_image(path: Path, what: str) -> nb.Nifti1Image:
    if not path.is_file():
        raise InputError(path, f"the {what} does not exist.", "Check the fMRIPrep output.")
    try:
        img = nb.load(path, keep_file_open=True) if str(path).endswith(".gz") else nb.load(path)
    except Exception as exc:  # nibabel raises many types for broken files
        raise InputError(path, f"the {what} cannot be read as NIfTI ({exc}).",
                         "The file is corrupt or truncated: copy it again or rerun fMRIPrep "
                         "for this participant.") from exc
    return img


def _check_affine(img: nb.Nifti1Image, path: Path, what: str) -> np.ndarray:
    hdr = img.header
    aff = np.asarray(img.affine, dtype=float)
    if not np.all(np.isfinite(aff)) or abs(np.linalg.det(aff[:3, :3])) < 1e-6:
        raise InputError(path, f"the {what} has an invalid voxel-to-world affine.",
                         "Check the NIfTI header (qform/sform).")
    q, qc = hdr.get_qform(coded=True)
    s, sc = hdr.get_sform(coded=True)
    if q is not None and s is not None and qc > 0 and sc > 0:
        if not np.allclose(q, s, atol=1e-3):
            err = float(np.abs(q - s).max())
            raise InputError(path, f"the {what}'s qform and sform disagree (by up to "
                             f"{err:.3g} mm); which one a program uses would change where "
                             "the target is.",
                             "Fix the header (e.g. nibabel: img.set_qform(img.get_sform())) "
                             "after checking which is right, or rerun fMRIPrep.")
    return aff


def _repetition_time(img: nb.Nifti1Image, bold: Path, bold_json: Path | None) -> float:
    tr_json = None
    if bold_json is not None and Path(bold_json).is_file():
        try:
            meta = json.loads(Path(bold_json).read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InputError(bold_json, f"the BOLD sidecar is not valid JSON ({exc}).",
                             "Repair or regenerate the JSON sidecar.") from exc
        if not isinstance(meta, dict):
            raise InputError(bold_json, f"the BOLD sidecar holds a JSON {type(meta).__name__}, "
                             "not an object.", "Repair or regenerate the JSON sidecar: "
                             "it must hold one JSON object, in curly braces.")
        tr_json = meta.get("RepetitionTime")
    if tr_json is None:
        raise InputError(bold_json or bold, "RepetitionTime is missing from the BOLD JSON "
                         "sidecar.", "Add \"RepetitionTime\" (seconds) to the sidecar; "
                         "fMRIPrep writes it.")
    try:
        tr = float(tr_json)
    except (TypeError, ValueError):
        raise InputError(bold_json, f"RepetitionTime {tr_json!r} is not a number.",
                         "Write it in seconds, e.g. 2.0.") from None
    if not (0.05 < tr < 20):
        raise InputError(bold_json, f"RepetitionTime {tr} s is implausible.",
                         "RepetitionTime must be in seconds (e.g. 2.0, not 2000).")
    zooms = img.header.get_zooms()
    if len(zooms) > 3 and zooms[3] > 0:
        unit = img.header.get_xyzt_units()[1]
        tr_hdr = float(zooms[3]) * {"msec": 1e-3, "usec": 1e-6}.get(unit, 1.0)
        if abs(tr_hdr - tr) > 0.01 * tr + 1e-3:
            raise InputError(bold, f"the repetition time in the NIfTI header ({tr_hdr:g} s) "
                             f"disagrees with RepetitionTime in {Path(bold_json).name} "
                             f"({tr:g} s).", "Find out which is right and fix the other; the "
                             "band-pass filter depends on it.")
    return tr


_ZSCORE_BLOCK = 8192
_N_BOXES = 3


class _VolumeStream:
    """Stream a 4D NIfTI in chunks of volumes: read, crop, smooth, mask.

    A background thread decompresses the file *sequentially, once* (``isal.igzip`` or
    ``gzip``, or plain reads, into a reused buffer of the on-disk dtype, then scaling with
    ``scl_slope`` / ``scl_inter`` to float32) and does the first (x) smoothing pass, so reading
    overlaps with the other passes and the matrix products in the caller. Each chunk is cropped to the brain mask's bounding box plus the smoothing
    kernel's radius and smoothed with the same separable Gaussian (``gaussian_filter1d``,
    axes x, y, z in that order, same sigma and truncation, ``reflect`` at the image border) as
    ``nilearn.image.smooth_img``; results inside the box are identical to smoothing the whole
    volume. Iterating yields ``(first, stop, x, bad)`` with ``x`` float32 (volumes, brain
    voxels) in the order of ``np.argwhere(mask)``.
    """

    def __init__(self, img: nb.Nifti1Image, path: Path, mask: np.ndarray, fwhm: float | None,
                 affine: np.ndarray, chunk: int) -> None:
        self.img, self.path, self.chunk = img, path, max(1, int(chunk))
        self.shape = tuple(int(v) for v in img.shape[:3])
        self.n_vols = int(img.shape[3])
        vox = np.argwhere(mask)
        vsize = np.sqrt(np.sum(np.asarray(affine, float)[:3, :3] ** 2, axis=0))
        if fwhm:
            self.sigma = [float(v) for v in fwhm / (np.sqrt(8 * np.log(2)) * vsize)]
        else:
            self.sigma = [0.0, 0.0, 0.0]
        rad = [int(4.0 * s + 0.5) if s > 0 else 0 for s in self.sigma]  # scipy's truncate=4
        lo, hi = vox.min(axis=0), vox.max(axis=0)
        self.box = [(max(0, int(lo[i]) - rad[i]), min(self.shape[i], int(hi[i]) + rad[i] + 1))
                    for i in range(3)]
        (x0, x1), (y0, y1), (z0, z1) = self.box
        self.crop = (z1 - z0, y1 - y0, x1 - x0)  # C layout (z, y, x): x is contiguous on disk
        # the mask's own bounding box inside the crop, per axis (x, y, z)
        self.inner = [(int(lo[i]) - self.box[i][0], int(hi[i]) + 1 - self.box[i][0])
                      for i in range(3)]
        self.flat = (((vox[:, 2] - z0) * self.crop[1] + (vox[:, 1] - y0)) * self.crop[2]
                     + (vox[:, 0] - x0)).astype(np.intp)
        self.wait = self.smooth = self.read = self.smooth_x = 0.0
        self._q: queue.Queue = queue.Queue(maxsize=_N_BOXES)
        self._free: queue.Queue = queue.Queue()
        for _ in range(_N_BOXES):  # float32 crop buffers cycled between reader and consumer
            self._free.put(np.empty((self.chunk, *self.crop), dtype=np.float32))
        self._x = np.empty((self.chunk, len(self.flat)), dtype=np.float32)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ reader thread
    def _raw_source(self):
        """A reader for the on-disk bytes, or None when the generic path must be used."""
        from nibabel.arrayproxy import ArrayProxy

        proxy = self.img.dataobj
        if not isinstance(proxy, ArrayProxy) or getattr(proxy, "order", "F") != "F" \
                or len(proxy.shape) != 4:
            return None
        name = str(self.path)
        if name.endswith(".gz"):
            try:  # ISA-L's inflate needs ~35 % less CPU than zlib's (measured, benchmarks/)
                from isal import igzip as _gz
            except ImportError:  # pragma: no cover - optional speed-up
                _gz = gzip
            fh = _gz.open(name, "rb")
        else:
            fh = open(name, "rb")  # noqa: SIM115
        skip = int(proxy.offset)
        while skip > 0:
            got = fh.read(min(skip, 1 << 20))
            if not got:
                fh.close()
                raise EOFError("file ends inside the header")
            skip -= len(got)
        return fh

    def _producer(self) -> None:
        from scipy.ndimage import gaussian_filter1d

        fh = None
        try:
            fh = self._raw_source()
            proxy = self.img.dataobj
            nx, ny, nz = self.shape
            (x0, x1), (y0, y1), (z0, z1) = self.box
            slope = float(getattr(proxy, "slope", 1.0))
            inter = float(getattr(proxy, "inter", 0.0))
            raw = None
            if fh is not None:  # one reused buffer of the on-disk dtype (fresh pages are slow)
                raw = np.empty((self.chunk, nz, ny, nx), dtype=proxy.dtype)
            for a in range(0, self.n_vols, self.chunk):
                b = min(self.n_vols, a + self.chunk)
                box = self._free_box()
                if box is None:
                    return
                box = box[: b - a]
                t = time.perf_counter()
                try:
                    if raw is not None:
                        part = raw[: b - a]
                        view = memoryview(part.reshape(-1).view(np.uint8))
                        got = 0
                        while got < view.nbytes:
                            n = fh.readinto(view[got:])
                            if not n:
                                raise EOFError(f"file ends after {got} of {view.nbytes} bytes")
                            got += n
                        src = part[:, z0:z1, y0:y1, x0:x1]
                        if slope != 1.0 or inter != 0.0:
                            np.multiply(src, np.float32(slope), out=box, casting="unsafe")
                            box += np.float32(inter)
                        else:
                            np.copyto(box, src, casting="unsafe")
                    else:
                        part = np.asarray(self.img.dataobj[x0:x1, y0:y1, z0:z1, a:b],
                                          dtype=np.float32)
                        np.copyto(box, part.transpose(3, 2, 1, 0))
                except Exception as exc:  # noqa: BLE001 - reported by the consumer
                    self._put(("error", a, b, exc))
                    return
                self.read += time.perf_counter() - t
                t = time.perf_counter()
                # non-finite values, then the x pass of the smoothing here: this thread has
                # spare time while the consumer smooths along y and z and multiplies
                flat2d = box.reshape(b - a, -1)
                n_bad = None  # (volumes, brain voxels) bool where a value is not finite
                if not np.isfinite(flat2d.sum(dtype=np.float64)):  # cheap test, exact fallback
                    finite = np.isfinite(flat2d)
                    n_bad = ~finite[:, self.flat]
                    flat2d[~finite] = 0.0  # as nilearn's ensure_finite before smoothing
                    del finite
                if self.sigma[0] > 0:
                    for v0 in range(0, b - a, 8):
                        sub = box[v0:v0 + 8]
                        gaussian_filter1d(sub, self.sigma[0], axis=3, output=sub)
                self.smooth_x += time.perf_counter() - t
                if not self._put(("ok", a, b, (box, n_bad))):
                    return
            self._put(("end", 0, 0, None))
        except Exception as exc:  # noqa: BLE001
            self._put(("error", 0, self.n_vols, exc))
        finally:
            if fh is not None:
                fh.close()

    def _free_box(self) -> np.ndarray | None:
        while not self._stop.is_set():
            try:
                return self._free.get(timeout=0.2)
            except queue.Empty:
                continue
        return None

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._q.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    # ------------------------------------------------------------------ consumer
    def __enter__(self) -> Self:
        self._thread = threading.Thread(target=self._producer, name="tmstarget-reader",
                                        daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def __iter__(self):
        from scipy.ndimage import gaussian_filter1d

        while True:
            t = time.perf_counter()
            kind, a, b, box = self._q.get()
            self.wait += time.perf_counter() - t
            if kind == "end":
                return
            if kind == "error":
                raise InputError(self.path, f"volumes {a}-{b - 1} cannot be read ({box}).",
                                 "The file is corrupt or truncated: copy it again or rerun "
                                 "fMRIPrep.") from box
            t = time.perf_counter()
            box, n_bad = box
            c = box.shape[0]
            flat2d = box.reshape(c, -1)
            # y then z passes (the reader did x: nilearn's order), each only where a later
            # pass or the mask needs it (y: x inside the mask's box; z: x and y inside it);
            # a few volumes at a time
            (ix0, ix1), (iy0, iy1) = self.inner[0], self.inner[1]
            for v0 in range(0, c, 8):
                if self.sigma[1] > 0:
                    sub = box[v0:v0 + 8, :, :, ix0:ix1]
                    gaussian_filter1d(sub, self.sigma[1], axis=2, output=sub)
                if self.sigma[2] > 0:
                    sub = box[v0:v0 + 8, :, iy0:iy1, ix0:ix1]
                    gaussian_filter1d(sub, self.sigma[2], axis=1, output=sub)
            x = self._x[:c]
            np.take(flat2d, self.flat, axis=1, out=x)
            self._free.put(box.base if box.base is not None else box)
            del box, flat2d
            self.smooth += time.perf_counter() - t
            yield a, b, x, n_bad


def denoise_run(bold: str | Path, mask: str | Path, confounds: str | Path,
                bold_json: str | Path | None, strategy: Strategy, fd_threshold: float = 0.5,
                std_dvars_threshold: float | None = None, min_segment: int = 5,
                chunk_volumes: int = CHUNK_VOLUMES, halves: bool = False,
                gap_seconds: float = 0.0,
                extra_regressors: tuple[np.ndarray, list[str]] | None = None,
                task_events: str | Path | None = None) -> DenoisedRun:
    """Denoise one preprocessed BOLD run inside its brain mask.

    Parameters
    ----------
    bold, mask, confounds, bold_json : path
        fMRIPrep's ``desc-preproc_bold``, ``desc-brain_mask``, ``desc-confounds_timeseries.tsv``
        (its ``.json`` beside it) and the BOLD JSON sidecar. The confounds are read from
        ``confounds`` itself (never looked up from the BOLD file's name).
    strategy : Strategy
        See :data:`tmstarget.cleaning.STRATEGIES` and :func:`resolve_strategy`.
    fd_threshold : float
        Framewise displacement (mm) above which a volume is censored.
    std_dvars_threshold : float or None
        Standardised DVARS above which a volume is censored (None: not used).
    min_segment : int
        Stretches of uncensored volumes shorter than this are censored too.
    chunk_volumes : int
        Volumes read at a time (memory vs. speed).
    halves : bool
        Also clean the run's two halves, each as its own problem, in the same pass.
    gap_seconds : float
        Time left out between the halves.
    extra_regressors : (array (volumes, k), names), optional
        More regressors cleaned and regressed with the confounds.
    task_events : path, optional
        The run's BIDS ``events.tsv``: its task design (events convolved with SPM's HRF and its
        derivative, :func:`tmstarget.task.task_design`) is regressed with the confounds, so
        connectivity is computed on the task residuals ("background connectivity").

    Returns
    -------
    DenoisedRun

    Raises
    ------
    InputError
        Any problem with the inputs, naming the file.
    """
    bold, mask, confounds = Path(bold), Path(mask), Path(confounds)
    img = _load_image(bold, "preprocessed BOLD image")
    if img.ndim != 4:
        raise InputError(bold, f"this image is {img.ndim}D ({img.shape}); a BOLD run must be 4D "
                         "(x, y, z, time).", "Give the 4D preprocessed BOLD series.")
    n_vols = int(img.shape[3])
    if n_vols < 10:
        raise InputError(bold, f"the run has only {n_vols} volumes.", "Use a full resting run.")
    aff = _check_affine(img, bold, "BOLD image")
    shape = tuple(int(s) for s in img.shape[:3])
    mimg = _load_image(mask, "brain mask")
    maff = _check_affine(mimg, mask, "brain mask")
    if tuple(mimg.shape[:3]) != shape or not np.allclose(maff, aff, atol=1e-3):
        raise InputError(mask, grid_mismatch(tuple(mimg.shape), maff, shape, aff, bold.name),
                         "Use the brain mask fMRIPrep wrote for this run (same space and res).")
    try:
        bmask = np.asarray(mimg.dataobj).reshape(shape) > 0
    except Exception as exc:
        raise InputError(mask, f"the brain mask cannot be read ({exc}).",
                         "Copy it again or rerun fMRIPrep.") from exc
    if not bmask.any():
        raise InputError(mask, "the brain mask is empty.", "Use fMRIPrep's brain mask.")
    tr = _repetition_time(img, bold, Path(bold_json) if bold_json else None)
    table = read_confounds(confounds, n_vols, bold.name)
    meta = read_confounds_metadata(confounds)
    cens = censoring(table, fd_threshold, std_dvars_threshold, min_segment)
    keep = cens.keep
    conf, names = select_regressors(table, meta, strategy, confounds, rows=keep)
    task_qc: dict[str, Any] | None = None
    if task_events is not None:
        from .io import sha256sum
        from .task import task_design

        design = task_design(task_events, n_vols, tr)
        task_qc = {"events_file": str(task_events), "sha256": sha256sum(task_events),
                   "regressors": list(design.names), "conditions": list(design.conditions),
                   "model": "events convolved with SPM's canonical HRF + temporal derivative "
                            "(nilearn), regressed with the confounds"}
        prev = extra_regressors
        extra_regressors = (np.asarray(design.regressors, float), list(design.names))
        if prev is not None:
            extra_regressors = (np.column_stack([prev[0], extra_regressors[0]]),
                                [*prev[1], *extra_regressors[1]])
    if extra_regressors is not None:
        xr, xnames = extra_regressors
        xr = np.asarray(xr, float)
        if xr.shape[0] != n_vols or not np.all(np.isfinite(xr)):
            raise InputError(bold, f"the extra regressors have {xr.shape[0]} rows (or non-"
                             f"finite values) for a run of {n_vols} volumes.",
                             "Check the task events file of this run.")
        conf = np.column_stack([conf, xr])
        names = [*names, *xnames]
    if not keep.any():
        raise InputError(bold, f"every volume of this run is censored (framewise displacement "
                         f"above {fd_threshold} mm, non-steady-state, or in a stretch shorter "
                         f"than {min_segment} volumes).",
                         "The run has too much motion to be used: exclude it, or, knowingly, "
                         "raise denoise.fd_threshold.")
    kept = np.flatnonzero(keep)
    if len(kept) < 3:
        raise InputError(bold, f"only {len(kept)} of {n_vols} volumes survive scrubbing.",
                         "This run has too much motion to be used.")
    t_op = time.perf_counter()
    parts = [cleaning_operator(keep, conf, tr, strategy, bold)]
    half_keep: tuple[np.ndarray, np.ndarray] | None = None
    if halves:
        ka, kb = split_keep(keep, int(round(float(gap_seconds) / tr)))
        if ka.sum() < 3:
            raise InputError(bold, f"too few volumes ({len(kept)}) to split this run into two "
                             f"halves with a gap of {gap_seconds:g} s.",
                             "Lower reproducibility.gap_seconds or disable reproducibility.")
        try:
            parts += [cleaning_operator(ka, conf, tr, strategy, bold),
                      cleaning_operator(kb, conf, tr, strategy, bold)]
        except InputError as exc:
            raise InputError(bold, f"a half of this run cannot be cleaned on its own: "
                             f"{exc.problem}", "Disable reproducibility, or use longer runs "
                             "(split-half reliability needs enough data in each half).") from exc
        half_keep = (np.flatnonzero(ka), np.flatnonzero(kb))
    op, slices = stack_operators(parts)
    op32 = op.astype(np.float32)
    # per part, the volumes its operator uses (a half never reads the other half's volumes:
    # its rows are skipped for chunks outside it, so the halves cost ~1x, not 2x, the flops)
    part_used = [np.any(op32[sl] != 0, axis=0) for sl in slices]
    t_op = time.perf_counter() - t_op

    voxels = np.argwhere(bmask).astype(np.int32)  # C order, as np.nonzero
    out = np.zeros((op.shape[0], len(voxels)), dtype=np.float32)
    used = np.any(op32 != 0, axis=0)  # volumes that enter any cleaned series at all
    assert not used[~keep].any()  # by construction: dropped volumes have zero columns
    from scipy.linalg.blas import sgemm

    bad_vox = np.zeros(len(voxels), dtype=bool)
    offset: np.ndarray | None = None
    timings = {"read_wait": 0.0, "smooth": 0.0, "matmul": 0.0}
    t0 = time.perf_counter()
    with _VolumeStream(img, bold, bmask, strategy.smoothing_fwhm, aff, chunk_volumes) as stream:
        for a, b, x, bad in stream:  # x: (volumes, brain voxels) float32, smoothed
            t1 = time.perf_counter()
            cols = used[a:b]
            if bad is not None and cols.any():  # only values that enter the result count
                bad_vox |= bad[cols].any(axis=0)
            if not cols.any():
                timings["matmul"] += time.perf_counter() - t1
                continue
            if offset is None:
                # L annihilates constants (detrending removes the mean), so subtracting a
                # per-voxel offset changes nothing but keeps float32 products far from
                # cancellation; taken from used volumes only (a censored volume's content
                # must not enter even the rounding).
                offset = x[cols].mean(axis=0, dtype=np.float64).astype(np.float32)
            # out += L[:, a:b] @ x, in place (BLAS gemm with beta=1 on the transposed,
            # Fortran-ordered view): no (rows x voxels) temporary per chunk. Censored and
            # non-steady-state volumes have all-zero columns in L: never read.
            if cols.all():
                xx = x
                xx -= offset
            else:
                xx = x[cols]
                xx -= offset
            for sl, pu in zip(slices, part_used, strict=True):
                if not pu[a:b].any():
                    continue
                lx = op32[sl, a:b] if cols.all() else op32[sl, a:b][:, cols]
                sgemm(1.0, xx.T, np.ascontiguousarray(lx).T, beta=1.0, c=out[sl].T,
                      overwrite_c=True)
            timings["matmul"] += time.perf_counter() - t1
        timings["read_wait"] = stream.wait
        timings["smooth"] = stream.smooth
        timings["read_thread"] = stream.read
        timings["smooth_x_in_reader"] = stream.smooth_x
    timings["stream_total"] = time.perf_counter() - t0
    timings["operator"] = t_op
    LAST_TIMINGS.clear()
    LAST_TIMINGS.update({k: round(v, 3) for k, v in timings.items()})
    if bad_vox.any():
        raise InputError(bold, f"{int(bad_vox.sum())} voxel(s) inside the brain mask contain NaN "
                         "or infinite values in volumes that are used.",
                         "The BOLD file is damaged: rerun fMRIPrep or repair it.")
    # z-score each part (sample SD, ddof=1); the full run decides which voxels have no signal.
    sds = [_center_and_sd(out[sl]) for sl in slices]
    sd = sds[0]
    ref = float(np.median(sd[sd > 0])) if np.any(sd > 0) else 0.0
    good = sd > 1e-5 * ref if ref > 0 else np.zeros(len(sd), bool)
    n_const = int((~good).sum())
    if n_const > MAX_CONSTANT_FRACTION * len(sd):
        raise InputError(bold, f"{n_const} of {len(sd)} voxels inside the brain mask "
                         f"({100 * n_const / len(sd):.0f} %) have a constant signal.",
                         f"The brain mask ({mask.name}) does not fit the data, or the data are "
                         "blank in part of the brain: check both in a viewer.")
    if n_const:
        out = out[:, good]
        voxels = voxels[good]
        sds = [v[good] for v in sds]
    for sl, v in zip(slices, sds, strict=True):
        _divide(out[sl], v)
    data = out[slices[0]]
    half_data = (out[slices[1]], out[slices[2]]) if half_keep is not None else None

    fd = fd_summary(table)
    n_nss = int(cens.non_steady_state.sum())
    censored = sorted(int(i) for i in np.flatnonzero(~keep))
    qc: dict[str, Any] = {
        "n_volumes": n_vols,
        "n_non_steady_state": n_nss,
        "n_censored": int((~keep & ~cens.non_steady_state).sum()),
        "n_censored_motion": int((cens.motion & ~cens.non_steady_state).sum()),
        "n_censored_short_segment": int((cens.short_segment & ~cens.motion
                                         & ~cens.non_steady_state).sum()),
        "n_retained": int(len(kept)),
        "retained_seconds": float(len(kept) * tr),
        "fd": [round(float(v), 5) for v in fd],
        "fd_mean": float(np.mean(fd)),
        "fd_max": float(np.max(fd)),
        "censored": censored,
        "fd_threshold": float(fd_threshold),
        "std_dvars_threshold": std_dvars_threshold,
        "min_segment": int(min_segment),
        "confound_columns": list(names),
        "n_constant_voxels_dropped": n_const,
        "repetition_time": tr,
        "strategy": strategy.to_dict(),
        "cleaning": ("non-steady-state and edge-censored volumes dropped; censored volumes "
                     "inside the run replaced by a cubic spline through the kept volumes "
                     "(signals and confounds); linear detrend and band-pass of signals and "
                     "confounds; confounds z-scored and regressed; censored volumes removed "
                     "(tmstarget.cleaning)"),
    }
    qc["task_regression"] = task_qc
    if half_keep is not None:
        qc["halves"] = {"volumes": [int(len(h)) for h in half_keep],
                        "first_last": [[int(h[0]), int(h[-1])] for h in half_keep],
                        "gap_seconds": float(gap_seconds),
                        "description": "each half of the run cleaned as its own problem "
                                       "(its own interpolation, detrending, filter and "
                                       "regression)"}
    return DenoisedRun(data, voxels, aff, shape, kept.astype(np.int32), tr, qc, half_data,
                       None if half_keep is None else (half_keep[0].astype(np.int32),
                                                       half_keep[1].astype(np.int32)))


def _center_and_sd(block: np.ndarray) -> np.ndarray:
    """Centre the columns of ``block`` in place (float64 work in blocks); return their SD."""
    sd = np.empty(block.shape[1], dtype=np.float64)
    for c0 in range(0, block.shape[1], _ZSCORE_BLOCK):
        blk = block[:, c0:c0 + _ZSCORE_BLOCK].astype(np.float64)
        blk -= blk.mean(axis=0)
        sd[c0:c0 + _ZSCORE_BLOCK] = blk.std(axis=0, ddof=1) if blk.shape[0] > 1 else 0.0
        block[:, c0:c0 + _ZSCORE_BLOCK] = blk
    return sd


def _divide(block: np.ndarray, sd: np.ndarray) -> None:
    """Divide the columns of ``block`` by ``sd`` in place (columns with ``sd == 0`` stay 0)."""
    safe = np.where(sd > 0, sd, 1.0).astype(np.float32)
    for c0 in range(0, block.shape[1], _ZSCORE_BLOCK):
        block[:, c0:c0 + _ZSCORE_BLOCK] /= safe[c0:c0 + _ZSCORE_BLOCK]


def save_denoised(run: DenoisedRun, path: str | Path) -> None:
    """Write a :class:`DenoisedRun` to ``.npz`` atomically (temp file + rename)."""
    extra = {}
    if run.halves is not None and run.kept_halves is not None:
        extra = {"half_a": run.halves[0], "half_b": run.halves[1],
                 "kept_a": run.kept_halves[0], "kept_b": run.kept_halves[1]}
    with atomic_write(path, "wb") as fh:
        np.savez(fh, data=run.data, voxels=run.voxels, affine=run.affine,
                 shape=np.asarray(run.shape), kept=run.kept, tr=np.asarray(run.tr),
                 qc=np.asarray(json.dumps(run.qc, sort_keys=True)), **extra)


def load_denoised(path: str | Path) -> DenoisedRun:
    """Read a file written by :func:`save_denoised`."""
    with np.load(path, allow_pickle=False) as z:
        halves = kept_halves = None
        if "half_a" in z.files:
            halves = (z["half_a"], z["half_b"])
            kept_halves = (z["kept_a"], z["kept_b"])
        return DenoisedRun(z["data"], z["voxels"], z["affine"],
                           tuple(int(s) for s in z["shape"]), z["kept"], float(z["tr"]),
                           json.loads(str(z["qc"])), halves, kept_halves)
