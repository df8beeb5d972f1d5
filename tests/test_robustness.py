"""Results you can trust across reruns and cohorts (issue 17): each case that was measured.

* results follow their configuration and their inputs' content (a changed key reruns exactly
  what it shapes; an input replaced by an *older* file is recomputed; the saved config and the
  sidecars describe the values that made them);
* one broken participant never stops the others (unreadable, dangling, undecodable, JSON array,
  invalid confounds JSON, mirrored T1w, a 185-character label, a newline in a folder name) and
  runs are matched on every entity (``dir-AP``/``dir-PA``);
* one line naming the file instead of a traceback; outputs honour the umask.

Simulated sample data (``data_sample/``, simulated BOLD on real anatomy), copied and broken.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import nibabel as nb
import numpy as np
import pandas as pd
import pytest
import yaml

from tmstarget import io as tio
from tmstarget.errors import InputError, TmsTargetError
from tmstarget.provenance import (
    ALL,
    PLANNING_ONLY,
    REPORT_ONLY,
    RULE_CONFIG,
    UndeclaredConfigKey,
    rule_config,
    strict_config,
)
from tmstarget.smk import run_step

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data_sample"
RULES = ("denoise_run", "seed_map", "target", "reproducibility", "aggregate", "native", "report",
         "cohort_report")
LONG = "L" * 185  # a 185-character participant label (ENAMETOOLONG before)


# --------------------------------------------------------------------------- helpers
def clone(dest_root: Path, label: str, src_label: str = "01", func_entity: str = "",
          parts: tuple[str, ...] = ("anat", "func")) -> Path:
    """Copy sample participant ``src_label`` into ``dest_root`` as ``sub-<label>``; with
    ``func_entity`` (e.g. ``dir-AP``), that entity is added to the run's file names."""
    src = SAMPLE / f"sub-{src_label}"
    dst = dest_root / f"sub-{label}"
    for f in src.rglob("*"):
        if f.is_dir() or f.parent.name not in parts:
            continue
        name = f.name.replace(f"sub-{src_label}", f"sub-{label}")
        if func_entity and f.parent.name == "func":
            name = name.replace("_task-rest_", f"_task-rest_{func_entity}_")
        out = dst / f.parent.relative_to(src) / name
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f, out)
    return dst


def new_dataset(root: Path) -> Path:
    root.mkdir(parents=True)
    shutil.copy(SAMPLE / "dataset_description.json", root)
    return root


def func_file(root: Path, label: str, kind: str) -> Path:
    pat = {"bold": "*_desc-preproc_bold.nii.gz", "bold_json": "*_desc-preproc_bold.json",
           "confounds": "*_desc-confounds_timeseries.tsv",
           "confounds_json": "*_desc-confounds_timeseries.json",
           "mask": "*_desc-brain_mask.nii.gz"}[kind]
    return next((root / f"sub-{label}" / "func").glob(pat))


def without_dac_override():
    """preexec_fn that drops the file-permission override (CAP_DAC_*) from a root child, so that
    ``chmod 000`` stops it as it stops any normal user; None when not root (not needed)."""
    if os.geteuid() != 0:
        return None
    libc = ctypes.CDLL(None, use_errno=True)

    def drop():
        for cap in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
            if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP; takes effect at exec
                raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")

    probe = subprocess.run([sys.executable, "-c", "print(1)"], preexec_fn=drop,
                           capture_output=True, check=False)
    if probe.returncode != 0:
        pytest.skip("running as root and cannot drop CAP_DAC_OVERRIDE: an unreadable file "
                    "cannot be made unreadable for this process")
    return drop


def tmstarget(src: Path, out: Path, *args: str, preexec=None, umask: int | None = None,
              timeout: int = 900) -> subprocess.CompletedProcess:
    def pre():
        if umask is not None:
            os.umask(umask)
        if preexec is not None:
            preexec()

    return subprocess.run([sys.executable, "-m", "tmstarget.cli", str(src), str(out),
                           "participant", "--cores", "2", *args], capture_output=True,
                          text=True, cwd=REPO, timeout=timeout, preexec_fn=pre, check=False)


def job_counts(text: str) -> dict[str, int]:
    """Jobs per rule, from the CLI's dry-run plan line (``steps: N (rule n, ...)``) or, for a
    direct Snakemake run, its job-stats table."""
    m = re.search(r"^\s*steps: \d+ \((.*)\)\s*$", text, re.MULTILINE)
    if m:
        found = dict((k, int(v)) for k, v in (item.rsplit(" ", 1) for item in m.group(1).split(", ")))
        return {rule: found.get(rule, 0) for rule in RULES}
    counts = {}
    for rule in RULES:
        m = re.search(rf"^\s*{rule}\s+(\d+)\s*$", text, re.MULTILINE)
        counts[rule] = int(m.group(1)) if m else 0
    return counts


def last_log(out: Path) -> str:
    """Snakemake's full output of the latest CLI run (the terminal shows a filtered view)."""
    logs = sorted((out / "logs" / "tmstarget").glob("*_snakemake.log"),
                  key=lambda p: p.stat().st_mtime_ns)
    assert logs, f"no Snakemake log under {out}/logs/tmstarget"
    return logs[-1].read_text(errors="replace")


def err_lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.startswith("tmstarget ERROR:")]


def digest(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


# --------------------------------------------------------------------------- the config map
def _schema_leaves() -> set[str]:
    schema = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())
    out = set()

    def walk(node, path):
        for k, v in node.get("properties", {}).items():
            if v.get("type") == "object" and "properties" in v:
                walk(v, path + (k,))
            else:
                out.add(".".join(path + (k,)))

    walk(schema, ())
    return out


def _covered(key: str, declared: set[str]) -> bool:
    parts = key.split(".")
    return any(".".join(parts[:i]) in declared for i in range(1, len(parts) + 1))


def test_every_config_key_is_declared_for_a_rule_or_planning_or_report_only():
    """A new schema key must be assigned (tmstarget.provenance), or it could change results
    without rerunning anything. Rules taking the whole config (``*``) do not count."""
    specific = {k for keys in RULE_CONFIG.values() for k in keys if k != ALL}
    leaves = _schema_leaves()
    missing = sorted(k for k in leaves
                     if not _covered(k, specific | PLANNING_ONLY | REPORT_ONLY))
    assert not missing, f"assign these config keys in tmstarget.provenance: {missing}"
    # every declared key exists (a typo would silently declare nothing)
    sections = {k.split(".")[0] for k in leaves} | {".".join(k.split(".")[:2]) for k in leaves}
    for key in specific | PLANNING_ONLY | REPORT_ONLY:
        assert key in leaves or key in sections, key
    # rule_config resolves every rule against the defaults
    cfg = yaml.safe_load((REPO / "config/config.yaml").read_text())
    for rule in RULE_CONFIG:
        rule_config(rule, cfg)


def test_every_workflow_rule_is_in_the_map():
    names = set()
    for smk in [*(REPO / "workflow/rules").glob("*.smk"), REPO / "Snakefile"]:
        names |= set(re.findall(r"^\s*rule (\w+):", smk.read_text(), re.MULTILINE))
    assert names - {"all"} == set(RULE_CONFIG)


def test_a_step_cannot_read_an_undeclared_key():
    cfg = yaml.safe_load((REPO / "config/config.yaml").read_text())
    c = strict_config(rule_config("denoise_run", cfg), cfg, "denoise_run")
    assert c["denoise"]["strategy"] == "fox2012"
    with pytest.raises(UndeclaredConfigKey, match="denoise.min_volumes"):
        c["denoise"]["min_volumes"]  # shapes seed_map, not denoise_run
    with pytest.raises(UndeclaredConfigKey, match="denoise.min_volumes"):
        c["denoise"].get("min_volumes", 100)  # a default does not hide it
    with pytest.raises(UndeclaredConfigKey):
        c.get("native")
    n = strict_config(rule_config("native", cfg), cfg, "native")
    assert dict(n["native"]) == cfg["native"]
    assert json.loads(json.dumps(c))["denoise"]["strategy"] == "fox2012"  # plain JSON


# --------------------------------------------------------------------------- reruns follow
@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """One participant run once (no reproducibility, for speed), under umask 022."""
    root = tmp_path_factory.mktemp("follow")
    src = new_dataset(root / "fmriprep")
    clone(src, "01")
    cfg = root / "base.yaml"
    cfg.write_text("reproducibility:\n  enabled: false\n")
    out = root / "out"
    res = tmstarget(src, out, "--configfile", str(cfg), umask=0o022)
    assert res.returncode == 0, res.stderr[-3000:]
    return root, src, out, cfg


def _variant(root: Path, name: str, extra: str) -> Path:
    """The base settings (no reproducibility) with ``extra`` (YAML) merged in, per section."""
    cfg = {"reproducibility": {"enabled": False}}
    for k, v in (yaml.safe_load(extra) or {}).items():
        cfg[k] = {**cfg.get(k, {}), **v} if isinstance(v, dict) else v
    p = root / f"{name}.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


# key -> (YAML, the rules that must rerun); every other rule must not
CHANGES = {
    "denoise.strategy": ("denoise:\n  strategy: 36p\n",
                         {"denoise_run", "seed_map", "target", "native", "aggregate", "report",
                          "cohort_report"}),
    "denoise.min_volumes": ("denoise:\n  min_volumes: 90\n",
                            {"seed_map", "target", "native", "aggregate", "report",
                             "cohort_report"}),
    "seed.radius_mm": ("seed:\n  radius_mm: 8\n",
                       {"seed_map", "target", "native", "aggregate", "report", "cohort_report"}),
    "search.radius_mm": ("search:\n  radius_mm: 15\n",
                         {"target", "native", "aggregate", "report", "cohort_report"}),
    "target.methods": ("target:\n  methods: [cluster]\n",
                       {"target", "native", "aggregate", "report", "cohort_report"}),
    "native.localite_space": ("native:\n  localite_space: LPS\n",
                              {"native", "aggregate", "report", "cohort_report"}),
    # the search region is cut to this depth below the scalp before choosing (target)
    "native.max_depth_mm": ("native:\n  max_depth_mm: 80\n",
                            {"target", "native", "aggregate", "report", "cohort_report"}),
    # the participant's own verdict: shapes rule reproducibility (verdict in its stats JSON),
    # hence native and the report; with reproducibility off (this fixture) only the tables
    # and reports, which take the whole config (test below: it is declared for reproducibility)
    "reproducibility.max_bootstrap_radius_mm (reproducibility off)": (
        "reproducibility:\n  max_bootstrap_radius_mm: 7\n",
        {"aggregate", "report", "cohort_report"}),
    # data-quality warnings: written into the native JSON and the navigator files
    "denoise.warn_retained_minutes": ("denoise:\n  warn_retained_minutes: 8\n",
                                      {"native", "aggregate", "report", "cohort_report"}),
}


def test_the_verdict_keys_shape_the_reproducibility_and_native_rules():
    for key in ("reproducibility.max_split_half_mm", "reproducibility.min_split_half_map_r",
                "reproducibility.max_bootstrap_radius_mm", "denoise.warn_retained_minutes",
                "denoise.warn_fd_mean_mm", "denoise.warn_censored_fraction"):
        assert key in RULE_CONFIG["reproducibility"], key
        assert key not in REPORT_ONLY, key
    for key in ("denoise.warn_retained_minutes", "denoise.warn_fd_mean_mm",
                "denoise.warn_censored_fraction"):
        assert key in RULE_CONFIG["native"] and key in RULE_CONFIG["native_hotspot"], key
    # which participants a run covers is not part of a participant's report configuration
    cfg = yaml.safe_load((REPO / "config/config.yaml").read_text())
    a = rule_config("report", {**cfg, "participant_label": ["03"]})
    b = rule_config("report", {**cfg, "participant_label": ["01", "02", "03"]})
    assert a == b and "participant_label" not in a
    assert rule_config("aggregate", {**cfg, "participant_label": ["03"]})["participant_label"]


@pytest.mark.e2e
@pytest.mark.parametrize("key", sorted(CHANGES))
def test_a_changed_setting_reruns_exactly_what_it_shapes(single, key):
    root, src, out, base = single
    extra, expected = CHANGES[key]
    cfg = _variant(root, re.sub(r"\W", "_", key), extra)
    res = tmstarget(src, out, "--configfile", str(cfg), "-n")
    assert res.returncode == 0, res.stderr[-3000:]
    counts = job_counts(res.stdout + res.stderr)
    assert {r for r, n in counts.items() if n} == expected, (key, counts)
    # back to the settings the outputs were made with: nothing to do
    res = tmstarget(src, out, "--configfile", str(base), "-n")
    assert "Nothing to be done" in res.stdout + res.stderr, (key, job_counts(res.stdout
                                                                              + res.stderr))


@pytest.mark.e2e
def test_localite_space_change_rewrites_the_exports_and_the_saved_config(single):
    root, src, out, base = single
    mni = next(out.rglob("*_space-MNI152NLin2009cAsym_desc-target_coords.json"))
    before = (digest(mni), mni.stat().st_mtime_ns)
    cfg = _variant(root, "lps", "native:\n  localite_space: LPS\n")
    res = tmstarget(src, out, "--configfile", str(cfg))
    assert res.returncode == 0, res.stderr[-3000:]
    xml = next(out.rglob("*_localite-InstrumentMarker.xml")).read_text()
    assert 'coordinateSpace="LPS"' in xml or "LPS" in xml
    native = json.loads(next(out.rglob("*_space-T1w_desc-target_coords.json")).read_text())
    assert {e["coordinate_space"] for e in native["exports"] if "coordinate_space" in e} == {"LPS"}
    saved = yaml.safe_load((out / "tmstarget_config.yaml").read_text())
    assert saved["native"]["localite_space"] == "LPS"
    report = json.loads(next(out.rglob("*_report.json")).read_text())
    assert report["config"]["native"]["localite_space"] == "LPS"
    assert (digest(mni), mni.stat().st_mtime_ns) == before, "the MNI target was recomputed"
    res = tmstarget(src, out, "--configfile", str(base))  # and back
    assert res.returncode == 0, res.stderr[-3000:]
    assert 'coordinateSpace="RAS"' in next(out.rglob("*_localite-InstrumentMarker.xml")).read_text()


@pytest.mark.e2e
def test_an_input_replaced_by_an_older_file_is_recomputed(single):
    root, src, out, base = single
    conf = func_file(src, "01", "confounds")
    original = conf.read_bytes()
    st = conf.stat()
    df = pd.read_csv(conf, sep="\t")
    df["global_signal"] = df["global_signal"] * 1.02 + 1.0
    new = root / "corrected_confounds.tsv"
    df.to_csv(new, sep="\t", index=False, na_rep="n/a")
    os.utime(new, ns=(st.st_atime_ns, st.st_mtime_ns - 10**12))  # older than every output
    try:
        shutil.copy2(new, conf)  # cp -p: content changes, modification time goes back
        res = tmstarget(src, out, "--configfile", str(base))
        assert res.returncode == 0, res.stderr[-3000:]
        assert job_counts(last_log(out))["denoise_run"] == 1
        tj = json.loads(next(out.rglob("*_space-MNI152NLin2009cAsym_desc-target_coords.json"))
                        .read_text())
        sha = {Path(i["path"]).name: i["sha256"] for i in tj["inputs"]}
        assert sha[conf.name] == digest(conf)
    finally:
        conf.write_bytes(original)
        os.utime(conf, ns=(st.st_atime_ns, st.st_mtime_ns))
    res = tmstarget(src, out, "--configfile", str(base))
    assert res.returncode == 0 and job_counts(last_log(out))["denoise_run"] == 1


@pytest.mark.e2e
def test_changed_setting_is_followed_even_without_snakemake_metadata(single):
    root, src, out, _base = single
    shutil.rmtree(out / ".snakemake" / "metadata", ignore_errors=True)
    cfg = _variant(root, "fd", "denoise:\n  fd_threshold: 0.4\n")
    res = tmstarget(src, out, "--configfile", str(cfg), "-n")
    assert job_counts(res.stdout + res.stderr)["denoise_run"] == 1, res.stdout[-3000:]


@pytest.mark.e2e
def test_outputs_honour_the_umask(single):
    _root, _src, out, _base = single
    modes = {str(p.relative_to(out)): p.stat().st_mode & 0o777 for p in out.rglob("*")
             if p.is_file() and p.relative_to(out).parts[0] != ".snakemake"}
    assert modes and {m for m in modes.values()} == {0o644}, {
        k: oct(v) for k, v in modes.items() if v != 0o644}


def test_atomic_writes_follow_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        tio.write_text(tmp_path / "a.txt", "x")
        tio.write_json(tmp_path / "b.json", {"a": 1})
        from tmstarget.navigation import _atomic_write_bytes

        _atomic_write_bytes(tmp_path / "c.xml", b"<a/>")
    finally:
        os.umask(old)
    assert {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()} == {
        "a.txt": 0o640, "b.json": 0o640, "c.xml": 0o640}


# --------------------------------------------------------------------------- one bad participant
@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """A cohort in which every participant but two is broken in its own way."""
    root = tmp_path_factory.mktemp("cohort")
    src = new_dataset(root / "fmriprep")
    clone(src, "01", func_entity="dir-AP")  # one participant, two runs told apart by dir only
    clone(src, "01", func_entity="dir-PA", parts=("func",))
    for lab in ("02", "03", "04", "05", "06", "07", LONG):
        clone(src, lab)
    func_file(src, "02", "bold").chmod(0)  # unreadable
    b3 = func_file(src, "03", "bold")
    b3.unlink()
    b3.symlink_to(root / "gone" / b3.name)  # dangling
    func_file(src, "04", "bold").write_bytes(b"\x1f\x8b" + os.urandom(4000))  # undecodable
    func_file(src, "05", "bold_json").write_text("[2.0]")  # a JSON array
    func_file(src, "06", "confounds_json").write_text('{"trans_x": {"Method": ')  # invalid
    anat = src / "sub-07" / "anat"  # T1w and mask mirrored consistently, transforms kept
    for f in (anat / "sub-07_desc-preproc_T1w.nii.gz", anat / "sub-07_desc-brain_mask.nii.gz"):
        img = nb.load(f)
        nb.save(nb.Nifti1Image(np.asarray(img.dataobj)[::-1], img.affine, img.header), f)
    (src / "sub-0\n9" / "func").mkdir(parents=True)  # a newline in a folder name
    cfg = root / "cfg.yaml"
    cfg.write_text("reproducibility:\n  enabled: false\n")
    out = root / "out"
    res = tmstarget(src, out, "--configfile", str(cfg), preexec=without_dac_override())
    return SimpleNamespace(root=root, src=src, out=out, cfg=cfg, res=res)


def _complete(out: Path, label: str) -> None:
    """A participant's outputs are all there: MNI target, native JSON + exports, report."""
    sub = out / f"sub-{label if len(label) <= 32 else label[:20]}"
    if len(label) > 32:
        sub = next(out.glob(f"sub-{label[:20]}*"))
    mni = list(sub.glob("func/*_space-MNI152NLin2009cAsym_desc-target_coords.json"))
    native = list(sub.glob("anat/*_space-T1w_desc-target_coords.json"))
    assert mni and native, f"sub-{label[:20]}: missing target outputs"
    rec = json.loads(native[0].read_text())
    for e in rec["exports"]:
        assert (out / e["file"]).is_file(), e["file"]
    assert rec["mirror_check"]["passed"] and rec["mirror_check"]["asymmetry_correlation"] > 0
    assert list(sub.glob("*_report.html")), f"sub-{label[:20]}: no report"
    assert json.loads(mni[0].read_text())["participant_id"] == f"sub-{label}"


@pytest.mark.e2e
def test_cohort_broken_participants_do_not_stop_the_others(cohort):
    res, out = cohort.res, cohort.out
    text = res.stderr
    assert "Traceback" not in text and "Segmentation" not in text, text[-4000:]
    assert res.returncode != 0  # sub-07's native step is refused
    for label in ("01", LONG):
        _complete(out, label)
    tsv = pd.read_csv(out / "targets.tsv", sep="\t")
    assert set(tsv.participant_id) == {"sub-01", "sub-07", f"sub-{LONG}"}


@pytest.mark.e2e
@pytest.mark.parametrize("label,kind,why", [
    ("02", "bold", "permission denied"),
    ("03", "bold", "broken symbolic link"),
    ("04", "bold", "cannot be read or decompressed"),
    ("05", "bold_json", "is an array, not a JSON object"),
    ("06", "confounds_json", "is not valid JSON"),
])
def test_cohort_unusable_file_is_one_line_naming_it(cohort, label, kind, why):
    f = next((cohort.src / f"sub-{label}" / "func").glob(
        {"bold": "*_bold.nii.gz", "bold_json": "*_bold.json",
         "confounds_json": "*_timeseries.json"}[kind]))
    lines = [ln for ln in cohort.res.stderr.splitlines() if f"skipped sub-{label}" in ln]
    assert len(lines) == 1, cohort.res.stderr[-4000:]
    assert str(f) in lines[0] and why in lines[0] and "What to do:" in lines[0], lines[0]
    sk = pd.read_csv(cohort.out / "skipped.tsv", sep="\t")
    row = sk[sk.participant_id == f"sub-{label}"]
    assert len(row) == 1 and str(f) in row.reason.iloc[0]


@pytest.mark.e2e
def test_cohort_runs_matched_on_every_entity(cohort):
    qc = json.loads(next(cohort.out.glob("work/sub-01/func/*_desc-seedmap_qc.json")).read_text())
    bolds = sorted(Path(r["inputs"][0]["path"]).name for r in qc["runs"])
    assert bolds == ["sub-01_task-rest_dir-AP_space-MNI152NLin2009cAsym_desc-preproc_bold.nii.gz",
                     "sub-01_task-rest_dir-PA_space-MNI152NLin2009cAsym_desc-preproc_bold.nii.gz"]
    for r in qc["runs"]:  # each run with its own confounds
        d = r["inputs"][0]["path"].split("_task-rest_")[1][:6]
        assert all(d in i["path"] for i in r["inputs"]), r["inputs"]


@pytest.mark.e2e
def test_cohort_mirrored_t1w_is_refused_whatever_max_depth(cohort):
    t1w = cohort.src / "sub-07" / "anat" / "sub-07_desc-preproc_T1w.nii.gz"
    for res in (cohort.res, tmstarget(cohort.src, cohort.out, "--configfile", str(cohort.cfg),
                                      "--configfile", str(_variant(cohort.root, "deep",
                                                                   "native:\n  max_depth_mm: 80\n")),
                                      preexec=without_dac_override())):
        lines = [ln for ln in err_lines(res.stderr) if "mirrored" in ln]
        assert lines and all(str(t1w) in ln for ln in lines), res.stderr[-3000:]
        assert "Traceback" not in res.stderr
        assert not list((cohort.out / "sub-07" / "anat").glob("*_space-T1w_*"))
    _complete(cohort.out, "01")


@pytest.mark.e2e
def test_cohort_long_label_names_are_bounded(cohort):
    names = [p.name for p in cohort.out.rglob("*")
             if p.relative_to(cohort.out).parts[0] != ".snakemake"]  # Snakemake's own
    assert max(len(n.encode()) for n in names) < 150
    assert not (cohort.out / f"sub-{LONG}").exists()
    tsv = pd.read_csv(cohort.out / "targets.tsv", sep="\t")
    assert f"sub-{LONG}" in set(tsv.participant_id)


@pytest.mark.e2e
def test_cohort_newline_in_a_folder_name_stays_in_its_cell(cohort):
    raw = (cohort.out / "skipped.tsv").read_text()
    rows = raw.splitlines()
    assert all(r.count("\t") == 3 for r in rows), raw
    sk = pd.read_csv(cohort.out / "skipped.tsv", sep="\t")
    assert any("sub-0\\n9" in str(v) for v in sk.participant_id)


# --------------------------------------------------------------------------- one line, not a traceback
def test_invalid_dataset_description_is_one_line(tmp_path):
    src = new_dataset(tmp_path / "fmriprep")
    clone(src, "01")
    for bad, why in (("{not json", "not valid JSON"), ('["a"]', "an array")):
        (src / "dataset_description.json").write_text(bad)
        out = tmp_path / f"out{len(bad)}"
        res = tmstarget(src, out, "-n", timeout=300)
        assert res.returncode != 0
        lines = err_lines(res.stderr)
        assert len(lines) == 1 and "dataset_description.json" in lines[0] and why in lines[0], \
            res.stderr[-2000:]
        assert "Traceback" not in res.stderr


@pytest.mark.parametrize("name", ["out{x}", "out<x>"])
def test_output_path_with_placeholders_is_one_line(tmp_path, name):
    src = new_dataset(tmp_path / "fmriprep")
    res = tmstarget(src, tmp_path / name, "-n", timeout=120)
    assert res.returncode == 2
    lines = err_lines(res.stderr)
    assert len(lines) == 1 and name in lines[0] and "placeholder" in lines[0], res.stderr
    assert "Traceback" not in res.stderr


def _make_run(tmp_path):
    from test_denoise import make_run

    p = make_run(tmp_path / "in", np.random.default_rng(3))
    run = {k: str(v) for k, v in p.items()}
    run["confounds_json"] = str(p["confounds"]).replace(".tsv", ".json")
    return p, run


CFG = {"denoise": {"strategy": "fox2012", "fd_threshold": 0.5, "std_dvars_threshold": None,
                   "min_segment": 5, "min_volumes": 20, "smoothing_fwhm": None,
                   "high_pass": None, "low_pass": None}}


def _step_error(tmp_path, run, capsys) -> str:
    from tmstarget.pipeline import denoise_step

    smk = SimpleNamespace(log=[str(tmp_path / "logs" / "x.log")])
    with pytest.raises(SystemExit) as ei:
        run_step(smk, denoise_step, run=run, cfg=CFG, out_npz=tmp_path / "o" / "x.npz")
    assert ei.value.code == 1
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("tmstarget ERROR:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_step_sidecar_json_array_is_one_line(tmp_path, capsys):
    p, run = _make_run(tmp_path)
    p["bold_json"].write_text("[2.0]")
    line = _step_error(tmp_path, run, capsys)
    assert p["bold_json"].name in line and "not an object" in line


def test_step_invalid_confounds_json_names_the_json(tmp_path, capsys):
    _p, run = _make_run(tmp_path)
    Path(run["confounds_json"]).write_text('{"a": ')
    line = _step_error(tmp_path, run, capsys)
    assert Path(run["confounds_json"]).name in line and "not valid JSON" in line
    assert not re.search(r"timeseries\.tsv\b", line), line


def test_step_mask_a_tenth_of_a_mm_off_says_the_affines_differ(tmp_path, capsys):
    p, run = _make_run(tmp_path)
    img = nb.load(p["mask"])
    aff = img.affine.copy()
    aff[0, 3] += 0.1
    m = nb.Nifti1Image(np.asarray(img.dataobj), aff)
    m.set_qform(aff, 4)
    m.set_sform(aff, 4)
    nb.save(m, p["mask"])
    line = _step_error(tmp_path, run, capsys)
    assert "affines differ" in line and "0.1 mm" in line, line
    shape = str(tuple(img.shape[:3]))
    assert line.count(shape) == 1, line  # not "grid X does not match grid X"


def test_disk_full_while_the_error_handler_writes_its_log(capsys):
    """The log is on the full disk too (/dev/full: every write fails with ENOSPC)."""
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full")
    smk = SimpleNamespace(log=["/dev/full"])

    def step_fails_on_full_disk():
        raise OSError(errno.ENOSPC, "No space left on device", "/out/x.nii.gz")

    def step_refuses():
        raise InputError("/in/bold.nii.gz", "something is wrong.", "Fix it.")

    for func, text in ((step_fails_on_full_disk, "disk (or your quota) is full"),
                       (step_refuses, "/in/bold.nii.gz: something is wrong.")):
        with pytest.raises(SystemExit) as ei:
            run_step(smk, func)
        assert ei.value.code == 1
        err = capsys.readouterr().err
        assert "Traceback" not in err, err
        lines = [ln for ln in err.splitlines() if ln.startswith("tmstarget ERROR:")]
        assert len(lines) == 1 and text in lines[0] and "could not be written" in lines[0]


def test_error_message_stays_on_one_line(capsys, tmp_path):
    smk = SimpleNamespace(log=[str(tmp_path / "x.log")])

    def step():
        raise TmsTargetError("/in/sub-0\n9/x.json: broken.")

    with pytest.raises(SystemExit):
        run_step(smk, step)
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln]
    assert lines == ["tmstarget ERROR: /in/sub-0 9/x.json: broken."]


# --------------------------------------------------------------------------- planning reads headers
def test_planning_never_opens_image_data(monkeypatch, tmp_path):
    """Memory requests and input checks read the header bytes only: nibabel's loader (which
    segfaulted with indexed_gzip on an unreadable file) is never called while planning."""
    from tmstarget.inputcheck import image_shape, input_problem
    from tmstarget.plan import build_plan

    def boom(*a, **k):
        raise AssertionError("nibabel.load called at planning time")

    monkeypatch.setattr(nb, "load", boom)
    src = new_dataset(tmp_path / "fmriprep")
    clone(src, "01")
    plan = build_plan({"fmriprep_dir": str(src), "output_dir": str(tmp_path / "o"),
                       "task": "rest"})
    assert plan.units and plan.anat
    bold = func_file(src, "01", "bold")
    assert image_shape(bold)[3] > 100
    assert input_problem(bold, "nifti") is None
    trunc = tmp_path / "t.nii.gz"
    trunc.write_bytes(bold.read_bytes()[:100])
    assert "decompressed" in input_problem(trunc, "nifti")


def test_workflow_planning_reads_headers_only(tmp_path):
    """The whole of Snakemake's planning (memory and run-time requests included) with
    nibabel's loader sabotaged: it must never be called, and the requests still come from the
    header (runtime 12 min for the sample's 49x58x49x300 run; 10 if the header were unread)."""
    src = new_dataset(tmp_path / "fmriprep")
    clone(src, "01")
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import nibabel, nibabel.loadsave\n"
        "def _no(*a, **k):\n"
        "    raise RuntimeError('nibabel.load called while planning')\n"
        "nibabel.load = nibabel.loadsave.load = _no\n")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"fmriprep_dir": str(src), "output_dir": str(tmp_path / "o")}))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO / "src")])}
    res = subprocess.run([sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"),
                          "-n", "--cores", "1", "--configfile", str(cfg), "--directory",
                          str(tmp_path)], capture_output=True, text=True, cwd=tmp_path, env=env,
                         check=False, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "called while planning" not in res.stdout + res.stderr
    denoise = res.stdout.split("rule denoise_run:")[1].split("\n\n")[0]
    assert "runtime=12" in denoise, denoise
