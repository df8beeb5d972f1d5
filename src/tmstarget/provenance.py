"""Results follow their configuration and their inputs' content.

Which configuration values shape which rule's outputs is written down once, here
(:data:`RULE_CONFIG`), and used three ways:

* each rule gets exactly its configuration values as ``params`` (Snakemake's *params* rerun
  trigger) and its step reads them through :func:`strict_config`, which refuses to hand out
  a value the rule has not declared, so a step can never depend on a key that does not
  trigger its rerun;
* each job has a **stamp** (``work/stamps/<rule>/<job>.json``) among its inputs: its declared
  configuration values, the tmstarget version and the SHA-256 of every external input file.
  The stamp is rewritten at planning time only when that content changes, so its new
  modification time reruns exactly the job and what depends on it. This catches what
  Snakemake's own triggers miss: an input replaced by a different file with an *older*
  modification time (``cp -p``), and a changed setting when Snakemake's metadata
  (``.snakemake/metadata``) is gone;
* a test checks that every key of the config schema is declared for a rule, or listed as
  planning-only (:data:`PLANNING_ONLY`: it decides which jobs and inputs exist) or
  report-only (:data:`REPORT_ONLY`: it only shapes the cohort tables and the reports).

Checksums are cached by file identity (device, inode, size, modification and change times) in
``work/stamps/checksums.json``, so an unchanged input is hashed once, on the first planning.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from . import __version__

#: Every key of the whole configuration (used by the cohort files and the reports, which record
#: the full configuration they were made with).
ALL = "*"
#: Keys that only choose which participants this run covers. They are left out of the
#: per-participant report's configuration (:func:`rule_config`, :func:`strict_config`), so a
#: report is identical, and not rerun, whether its participant ran alone or with others.
SELECTION_KEYS: frozenset[str] = frozenset({"participant_label", "exclude_participants"})
#: Rules whose configuration is everything but :data:`SELECTION_KEYS`.
_UNIT_RULES = frozenset({"report"})

#: Rule name -> configuration keys (``section.key``, or ``section`` for all of it) that shape
#: its outputs. Keep in step with what each step reads (:func:`strict_config` enforces it).
#: Data-quality warning thresholds (tmstarget.verdict.data_warnings).
_WARN_KEYS = ("denoise.warn_retained_minutes", "denoise.warn_fd_mean_mm",
              "denoise.warn_censored_fraction")

RULE_CONFIG: dict[str, tuple[str, ...]] = {
    "denoise_run": ("denoise.strategy", "denoise.fd_threshold", "denoise.std_dvars_threshold",
                    "denoise.min_segment", "denoise.smoothing_fwhm", "denoise.high_pass",
                    "denoise.low_pass", "denoise.task_regression", "bids_dir",
                    # the two independently cleaned halves are made in the same pass
                    "reproducibility.enabled", "reproducibility.gap_seconds"),
    "seed_map": ("denoise.min_volumes", "seed", "space"),
    "target": ("search", "target", "denoise.fd_threshold", "space", "seed",
               "native.max_depth_mm"),
    "group_map": ("target.seedmap", "space"),
    "reproducibility": ("reproducibility.split", "reproducibility.gap_seconds",
                        "reproducibility.bootstrap_resamples",
                        "reproducibility.bootstrap_block_seconds",
                        "reproducibility.bootstrap_seed", "seed", "search", "target", "space",
                        # the per-participant verdict (tmstarget.verdict)
                        "reproducibility.max_split_half_mm",
                        "reproducibility.min_split_half_map_r",
                        "reproducibility.max_bootstrap_radius_mm", *_WARN_KEYS),
    # the verdict and warnings are written into the native JSON and the navigator files
    "native": ("native", *_WARN_KEYS),
    "native_hotspot": ("native", *_WARN_KEYS),
    "trial_blinded": ("trial.arms", "native.sphere_radius_mm", "native.localite_space"),
    "trial_engagement": ("seed", "space", "trial.engagement_radius_mm", "native.method"),
    "trial_engagement_cohort": ("trial.unblind",),
    "aggregate": (ALL,),
    "report": (ALL,),
    "cohort_report": (),
    # stage 1 (raw BIDS input, workflow/rules/fmriprep.smk)
    "builtin_preproc": ("task", "preprocessing.builtin"),
    "fmriprep": ("task", "preprocessing.fmriprep_image", "preprocessing.container_runtime",
                 "preprocessing.fs_license", "preprocessing.templateflow_home",
                 "preprocessing.fs_no_reconall", "preprocessing.output_spaces",
                 "preprocessing.extra_args"),
}

#: Keys that decide which jobs run and which files they read (their effect reaches the outputs
#: through the set of inputs and jobs, which Snakemake follows itself).
PLANNING_ONLY: frozenset[str] = frozenset({
    "fmriprep_dir", "output_dir", "participant_label", "exclude_participants", "task", "space",
    "res", "native.enabled", "reproducibility.enabled", "bids_dir", "preprocessing.method",
    # trial mode: the allocation is made when the workflow is planned (workflow/rules/trial.smk)
    # and reaches rule trial_blinded as its params (code, arm), which Snakemake follows
    "trial.enabled", "trial.allocation_file", "trial.seed", "trial.block_size",
    "trial.engagement",
})

#: Keys that only shape the cohort tables (rule ``aggregate``) and the reports: changing one
#: rebuilds those and nothing else.
REPORT_ONLY: frozenset[str] = frozenset({
    "reproducibility.max_split_half_ratio",
})


class UndeclaredConfigKey(KeyError):
    """A step read a configuration value that :data:`RULE_CONFIG` does not give its rule."""


def _sorted(value: Any) -> Any:
    """Mappings with sorted keys, recursively (a stable ``repr`` for Snakemake's params)."""
    if isinstance(value, Mapping):
        return {str(k): _sorted(value[k]) for k in sorted(value, key=str)}
    if isinstance(value, (list, tuple)):
        return [_sorted(v) for v in value]
    return value


def rule_config(rule: str, config: Mapping[str, Any]) -> dict[str, Any]:
    """The configuration values that shape ``rule``'s outputs, as a nested plain dict.

    Parameters
    ----------
    rule : str
        A key of :data:`RULE_CONFIG`.
    config : mapping
        The validated configuration (defaults filled in).

    Returns
    -------
    dict
        The same nesting as the configuration, with only the declared keys, sorted.
    """
    keys = RULE_CONFIG[rule]
    if ALL in keys:
        if rule in _UNIT_RULES:
            return _sorted({k: v for k, v in config.items() if k not in SELECTION_KEYS})
        return _sorted(dict(config))
    out: dict[str, Any] = {}
    for key in keys:
        parts = key.split(".")
        src: Any = config
        dst = out
        for i, part in enumerate(parts):
            if not isinstance(src, Mapping) or part not in src:
                raise KeyError(f"RULE_CONFIG[{rule!r}] names {key!r}, which the configuration "
                               "does not have")
            src = src[part]
            if i == len(parts) - 1:
                dst[part] = src
            else:
                dst = dst.setdefault(part, {})
    return _sorted(out)


class _Strict(dict):
    """A configuration (section) that refuses keys the rule has not declared."""

    def __init__(self, data: Mapping[str, Any], full: Mapping[str, Any], rule: str,
                 where: str = "") -> None:
        super().__init__()
        self._full, self._rule, self._where = full, rule, where
        order = [k for k in full if k in data] if isinstance(full, Mapping) else []
        for k in order + [k for k in data if k not in order]:  # the configuration's key order
            v = data[k]
            f = full.get(k) if isinstance(full, Mapping) else None
            if isinstance(v, Mapping) and isinstance(f, Mapping):
                # part of a section: strict inside; a whole section: as in the configuration
                v = _Strict(v, f, rule, f"{where}{k}.") if set(v) != set(f) else {
                    kk: v[kk] for kk in f}
            self[k] = v

    def _refuse(self, key: Any) -> None:
        raise UndeclaredConfigKey(
            f"config key '{self._where}{key}' is read by rule '{self._rule}' but not declared "
            f"for it in tmstarget.provenance.RULE_CONFIG: changing it would not rerun the rule. "
            "Declare it there.")

    def __missing__(self, key: Any) -> Any:
        if isinstance(self._full, Mapping) and key in self._full:
            self._refuse(key)
        raise KeyError(key)

    def get(self, key: Any, default: Any = None) -> Any:
        if key in self:
            return self[key]
        if isinstance(self._full, Mapping) and key in self._full:
            self._refuse(key)
        return default

    def __reduce__(self) -> Any:  # pickles (and copies) as a plain dict
        return (dict, (dict(self),))


def strict_config(values: Mapping[str, Any], full: Mapping[str, Any], rule: str) -> Any:
    """Wrap a rule's configuration values so that reading an undeclared key is an error.

    Parameters
    ----------
    values : mapping
        :func:`rule_config` of the rule (the job's ``params.cfg``).
    full : mapping
        The whole configuration (``snakemake.config``).
    rule : str

    Returns
    -------
    mapping
        Behaves like the configuration; a key the whole configuration has but the rule has not
        declared raises :class:`UndeclaredConfigKey` (also through ``.get`` with a default).
    """
    if ALL in RULE_CONFIG.get(rule, ()):
        if rule in _UNIT_RULES:
            return {k: v for k, v in full.items() if k not in SELECTION_KEYS}
        return dict(full)  # in the configuration's own key order (tmstarget_config.yaml)
    return _Strict(values, full, rule)


def declared_keys(rule: str) -> tuple[str, ...]:
    """The keys declared for ``rule`` (``*`` for all)."""
    return RULE_CONFIG[rule]


# --------------------------------------------------------------------------------------------
# stamps
# --------------------------------------------------------------------------------------------

def _identity(st: os.stat_result) -> list[int]:
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


class Stamps:
    """Writes the per-job stamps of one output folder (see the module docstring).

    Parameters
    ----------
    output_dir : path-like
        The workflow's output folder; stamps go to ``work/stamps/``.
    config : mapping
        The validated configuration.
    update : bool
        Rewrite a stamp whose content changed (False while another run holds the folder: the
        change is then applied by the next run). Missing stamps are always written.
    """

    def __init__(self, output_dir: str | os.PathLike[str], config: Mapping[str, Any],
                 update: bool = True) -> None:
        self.root = Path(output_dir) / "work" / "stamps"
        self.config = config
        self.update = update
        self.changed: list[str] = []
        self.deferred: list[str] = []
        self._cache_path = self.root / "checksums.json"
        try:
            self._cache: dict[str, Any] = json.loads(self._cache_path.read_text())
        except (OSError, ValueError):
            self._cache = {}
        self._cache_dirty = False
        self._rule_config: dict[str, tuple[dict[str, Any], str]] = {}

    def _config_of(self, rule: str) -> tuple[dict[str, Any], str]:
        """:func:`rule_config` of ``rule`` and its JSON as written inside a stamp (made once
        per rule: the configuration does not change while the workflow is planned)."""
        hit = self._rule_config.get(rule)
        if hit is None:
            cfg = rule_config(rule, self.config)
            text = json.dumps(cfg, indent=1, sort_keys=True).replace("\n", "\n ")
            hit = self._rule_config[rule] = (cfg, text)
        return hit

    def sha256(self, path: str | os.PathLike[str]) -> str | None:
        """SHA-256 of a file's content (cached by file identity); None if it cannot be read."""
        p = os.path.abspath(os.fspath(path))
        try:
            ident = _identity(os.stat(p))
        except OSError:
            return None
        hit = self._cache.get(p)
        if hit and hit.get("identity") == ident:
            return hit["sha256"]
        h = hashlib.sha256()
        try:
            with open(p, "rb") as fh:
                while block := fh.read(1 << 20):
                    h.update(block)
        except OSError:
            return None
        self._cache[p] = {"identity": ident, "sha256": h.hexdigest()}
        self._cache_dirty = True
        return h.hexdigest()

    def path(self, rule: str, job: str) -> str:
        """Where the stamp of one job is (``job``: the job's wildcard value, e.g. a prefix)."""
        return str(self.root / rule / f"{job}.json")

    def content(self, rule: str, files: Iterable[str | os.PathLike[str]] = ()) -> dict[str, Any]:
        """What a job's outputs depend on besides the outputs of other rules."""
        return {
            "rule": rule,
            "tmstarget": __version__,
            "config": self._config_of(rule)[0],
            "inputs": {os.path.abspath(os.fspath(f)): self.sha256(f)
                       for f in sorted(map(os.fspath, files))},
        }

    def _text(self, want: dict[str, Any]) -> str:
        """``json.dumps(want, indent=1, sort_keys=True)`` (the stamp file), with the rule's
        configuration part serialised once per rule (the pure-Python indenting encoder made
        the configuration of every job's stamp a large share of planning a big cohort)."""
        assert list(want) == ["rule", "tmstarget", "config", "inputs"]
        rest = {k: v for k, v in want.items() if k != "config"}
        head = json.dumps(rest, indent=1, sort_keys=True)
        # "config" sorts first of the four keys: insert it after the opening brace
        return '{\n "config": ' + self._config_of(want["rule"])[1] + "," + head[1:]

    def stamp(self, rule: str, job: str, files: Iterable[str | os.PathLike[str]] = ()) -> str:
        """Write the job's stamp if it is missing or its content changed; return its path.

        Written without ``fsync`` (:func:`tmstarget.io.atomic_write`): a stamp a crash loses or
        tears is written again by the next planning, which reruns its job (never the reverse).
        """
        from .io import write_text

        path = Path(self.path(rule, job))
        want = self.content(rule, files)
        try:
            have = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            have = None
        if have != want and (have is None or self.update):
            write_text(path, self._text(want) + "\n", durable=False)
            if have is not None:
                self.changed.append(f"{rule}:{job}")
        elif have != want:
            self.deferred.append(f"{rule}:{job}")
        return str(path)

    def save(self) -> None:
        """Keep the checksum cache for the next planning (best effort)."""
        if not self._cache_dirty:
            return
        from .io import write_text

        with contextlib.suppress(OSError):
            write_text(self._cache_path, json.dumps(self._cache, sort_keys=True))
        self._cache_dirty = False
