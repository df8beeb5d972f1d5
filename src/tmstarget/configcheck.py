"""Configuration problems as one line each, before anything runs.

Used by the ``tmstarget`` command (before Snakemake starts) and by the workflow's
``common.smk`` (before Snakemake's own schema validation), so that a direct ``snakemake``
user gets the same lines:

* an unknown key names its key path and, when a known key is close, "did you mean";
* a value the schema refuses names its key path and the schema's complaint in one line;
* cross-key rules the schema cannot express (e.g. ``native.method: weighted`` without
  ``weighted`` in ``target.methods``) are checked on the merged configuration.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

#: The configuration schema shipped with the workflow.
SCHEMA_PATH = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"

#: Methods computed when ``target.methods`` is not set (the schema's default).
_DEFAULT_METHODS = ["classic", "cluster", "weighted"]


def load_schema(path: str | Path | None = None) -> dict[str, Any]:
    """The configuration schema as a mapping."""
    return yaml.safe_load(Path(path or SCHEMA_PATH).read_text(encoding="utf-8"))


def _unknown_keys(cfg: Mapping[str, Any], schema: Mapping[str, Any], prefix: str) -> list[str]:
    """One line per key the schema does not know, with a "did you mean" when one is close."""
    out: list[str] = []
    props = schema.get("properties") or {}
    closed = schema.get("additionalProperties") is False
    for key, value in cfg.items():
        where = f"{prefix}{key}"
        if key in props:
            sub = props[key]
            if isinstance(value, Mapping) and isinstance(sub, Mapping) and "properties" in sub:
                out += _unknown_keys(value, sub, where + ".")
            continue
        if not closed:
            continue
        close = difflib.get_close_matches(str(key), list(props), n=1, cutoff=0.6)
        hint = (f"did you mean '{prefix}{close[0]}'?" if close
                else f"known keys here: {', '.join(sorted(props))}.")
        out.append(f"config key '{where}' is not a known key; {hint}")
    return out


def _schema_errors(cfg: Mapping[str, Any], schema: Mapping[str, Any]) -> list[str]:
    """One line per value the schema refuses (unknown keys are left to :func:`_unknown_keys`)."""
    try:
        import jsonschema
    except ImportError:  # pragma: no cover - jsonschema comes with Snakemake
        return []
    validator = jsonschema.Draft7Validator(schema)
    out = []
    for err in sorted(validator.iter_errors(dict(cfg)), key=lambda e: list(map(str, e.path))):
        if err.validator == "additionalProperties":
            continue
        where = ".".join(str(p) for p in err.absolute_path) or "(top level)"
        msg = err.message
        if len(msg) > 200:
            msg = msg[:197] + "..."
        out.append(f"config key '{where}': {msg}")
    return out


def _get(cfg: Mapping[str, Any], path: str, default: Any = None) -> Any:
    cur: Any = cfg
    for part in path.split("."):
        if not isinstance(cur, Mapping) or part not in cur:
            return default
        cur = cur[part]
    return cur


def cross_key_errors(cfg: Mapping[str, Any]) -> list[str]:
    """Rules between keys the schema cannot express; one line per broken rule.

    Parameters
    ----------
    cfg : mapping
        The merged configuration (defaults may be missing; the schema's defaults are assumed).
    """
    out: list[str] = []
    methods = _get(cfg, "target.methods")
    if not isinstance(methods, list):
        methods = list(_DEFAULT_METHODS)
    native_on = _get(cfg, "native.enabled", True) is not False
    nmethod = _get(cfg, "native.method")
    if native_on and nmethod is not None and nmethod not in methods:
        out.append(f"config key 'native.method' is '{nmethod}', which is not in target.methods "
                   f"({', '.join(map(str, methods))}); the native step could not export it. "
                   f"What to do: add '{nmethod}' to target.methods, or set native.method to one "
                   "of them (or null).")
    if "seedmap" in methods and _get(cfg, "target.seedmap.source", "cohort") == "file" \
            and not _get(cfg, "target.seedmap.file"):
        out.append("config key 'target.seedmap.file' is not set, but target.methods has seedmap "
                   "with target.seedmap.source: file. What to do: give the group map's path in "
                   "target.seedmap.file, or use target.seedmap.source: cohort.")
    seedmap_file = _get(cfg, "target.seedmap.file")
    if seedmap_file and _get(cfg, "target.seedmap.source", "cohort") == "file" \
            and not Path(str(seedmap_file)).expanduser().is_file():
        out.append(f"config key 'target.seedmap.file': {seedmap_file} is not a file. What to "
                   "do: check the group map's path.")
    if _get(cfg, "seed.kind", "sphere") == "file":
        sfile = _get(cfg, "seed.file")
        if not sfile:
            out.append("config key 'seed.file' is not set, but seed.kind is 'file'. What to do: "
                       "give the seed map's path in seed.file, or use seed.kind: sphere.")
        elif not Path(str(sfile)).expanduser().is_file():
            out.append(f"config key 'seed.file': {sfile} is not a file. What to do: check the "
                       "seed map's path.")
    scalp_methods = _get(cfg, "native.scalp_rules.methods")
    if native_on and isinstance(scalp_methods, list) and scalp_methods \
            and _get(cfg, "native.scalp_rules.enabled", True) is not False:
        lf = _get(cfg, "native.scalp_rules.landmarks_file")
        if lf and not Path(str(lf)).expanduser().is_file():
            out.append(f"config key 'native.scalp_rules.landmarks_file': {lf} is not a file. "
                       "What to do: check the path, or remove the key to use template landmarks.")
    return out


def config_problems(cfg: Mapping[str, Any], schema: Mapping[str, Any] | None = None) -> list[str]:
    """Every problem of a configuration, one line each (empty when it is fine)."""
    schema = load_schema() if schema is None else schema
    lines = _unknown_keys(cfg, schema, "")
    lines += _schema_errors(cfg, schema)
    if not lines:  # cross-key rules only make sense on values of the right type
        lines += cross_key_errors(cfg)
    return lines
