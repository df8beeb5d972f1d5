"""Hostile and odd names: labels never escape the output folder or reach a shell."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import tiny_file
from hypothesis import given, settings
from hypothesis import strategies as st

from tmstarget.discover import discover
from tmstarget.errors import ConfigError
from tmstarget.plan import _check_label, run_prefix, unit_prefix
from tmstarget.discover import RunInputs

HOSTILE = ["a b", "ü", "x'y", 'q"q', "a;b", "$(touch pwned)", "../..", "a/b", "<b>", "`id`",
           "", " ", "\n", "01\x00"]


@settings(max_examples=200, deadline=None)
@given(st.text(min_size=0, max_size=20))
def test_any_label_is_refused_or_stays_inside_the_output(label):
    out = Path("/tmp/out").resolve()
    try:
        _check_label(label, "participant", "x")
    except ConfigError as exc:
        assert "not a valid BIDS label" in str(exc)
        return
    assert label.isalnum() and label.isascii()
    p = (out / unit_prefix(label, None, "rest")).resolve()
    assert out in p.parents
    r = RunInputs(label, label, "rest", None, label, "b", "m", "c", "cj", "bj")
    p2 = (out / run_prefix(r)).resolve()
    assert out in p2.parents


def test_hostile_folder_names_are_reported_not_dropped(tmp_path):
    root = tmp_path / "fmriprep"
    root.mkdir()
    (root / "dataset_description.json").write_text(json.dumps(
        {"Name": "x", "BIDSVersion": "1.9.0", "DatasetType": "derivative"}))
    good = root / "sub-01" / "func"
    good.mkdir(parents=True)
    for f in ("sub-01_task-rest_space-MNI152NLin2009cAsym_desc-preproc_bold.nii.gz",
              "sub-01_task-rest_space-MNI152NLin2009cAsym_desc-preproc_bold.json",
              "sub-01_task-rest_space-MNI152NLin2009cAsym_desc-brain_mask.nii.gz",
              "sub-01_task-rest_desc-confounds_timeseries.tsv",
              "sub-01_task-rest_desc-confounds_timeseries.json"):
        tiny_file(good / f)
    for bad in ("sub-0 2", "sub-$(touch pwned)", "sub-a;b", "sub-ü"):
        (root / bad / "func").mkdir(parents=True)
    runs, skipped = discover(root)
    assert [r.participant for r in runs] == ["01"]
    reasons = " ".join(s.reason for s in skipped)
    for bad in ("sub-0 2", "sub-$(touch pwned)", "sub-a;b", "sub-ü"):
        assert repr(bad) in reasons
    assert not (tmp_path / "pwned").exists() and not Path("pwned").exists()


@settings(max_examples=60, deadline=None)
@given(st.text(min_size=1, max_size=30))
def test_any_name_gives_wellformed_xml_and_json(name):
    """Any target name (markup, quotes, control characters, unicode) yields files that parse."""
    import tempfile
    import xml.etree.ElementTree as ET

    from test_navigation import left_dlpfc_pose, make_t1w

    import tmstarget.navigation as nav

    with tempfile.TemporaryDirectory() as d:
        t1 = make_t1w(Path(d) / "sub-01_desc-preproc_T1w.nii.gz")
        pose = left_dlpfc_pose(t1, name=name)
        try:
            out = nav.write_all(pose, t1, Path(d) / "out", "sub-01")
        except ConfigError:
            return  # a refused name is fine; nothing may be written then
        for key in ("localite_instrument_markers", "localite_entry_target"):
            ET.parse(out[key])
        for key in ("json", "ant_mrk", "slicer_mrk_json"):
            json.loads(out[key].read_text(encoding="utf-8"))
        for p in out.values():
            assert Path(d, "out") in Path(p).resolve().parents


@settings(max_examples=200, deadline=None)
@given(st.text(min_size=0, max_size=40))
def test_report_environment_escapes_any_text(text):
    """The reports' template environment (autoescape) turns any label or path into inert text:
    the rendered fragment parses back to exactly one element whose text is the input."""
    from html.parser import HTMLParser

    from tmstarget.report import _env

    html = _env().from_string("<td>{{ v }}</td>").render(v=text)

    class P(HTMLParser):
        def __init__(self):
            super().__init__(convert_charrefs=True)
            self.tags, self.data = [], []

        def handle_starttag(self, tag, attrs):
            self.tags.append(tag)

        def handle_data(self, data):
            self.data.append(data)

    p = P()
    p.feed(html)
    p.close()
    assert p.tags == ["td"]
    assert "".join(p.data) == text.replace("\r\n", "\n").replace("\r", "\n") or \
        "".join(p.data) == text


# ------------------------------------------------------------- wildcard constraints (issue 21)
_ALNUM = st.text(alphabet="abcXYZ0123456789", min_size=1, max_size=40)  # > 32: hashed labels


@settings(max_examples=300, deadline=None)
@given(sub=_ALNUM, ses=st.none() | _ALNUM, task=_ALNUM,
       ents=st.lists(st.tuples(st.sampled_from(["acq", "dir", "run", "echo", "foo", "ce", ""]),
                               _ALNUM), max_size=4, unique_by=lambda kv: kv[0]))
def test_every_planned_name_has_the_form_its_constraint_accepts(sub, ses, task, ents):
    """The workflow's wildcard constraints (tmstarget.plan.*_PATTERN) accept every name the
    planner can make (long labels hashed, many run entities replaced by a digest), and each
    accepts only its own kind of name, so no two rules can claim the same file."""
    import re

    from tmstarget.plan import (ANAT_PREFIX_PATTERN, RUN_PREFIX_PATTERN, UNIT_PREFIX_PATTERN,
                                UNIT_STEM_PATTERN, anat_prefix, unit_stem)

    r = RunInputs(sub, ses, task, None, None, "b", "m", "c", "cj", "bj", tuple(ents))
    up, rp = unit_prefix(sub, ses, task), run_prefix(r)
    names = {"unit": up, "run": rp, "anat": anat_prefix(up), "stem": unit_stem(sub, ses)}
    pats = {"unit": UNIT_PREFIX_PATTERN, "run": RUN_PREFIX_PATTERN, "anat": ANAT_PREFIX_PATTERN,
            "stem": UNIT_STEM_PATTERN}
    for kind, name in names.items():
        assert re.fullmatch(pats[kind], name), (kind, name)
        # no other kind's constraint accepts it (a unit prefix is also a run prefix's form;
        # the two are only used in different file names)
        for other, pat in pats.items():
            if other != kind and {kind, other} != {"unit", "run"}:
                assert not re.fullmatch(pat, name), (kind, other, name)


def test_stamp_text_is_the_plain_json_dump(tmp_path):
    """Stamps serialise each rule's configuration once (tmstarget.provenance.Stamps._text):
    the file is exactly json.dumps(indent=1, sort_keys=True) of its content, as before."""
    import yaml

    from tmstarget.provenance import RULE_CONFIG, Stamps

    REPO = Path(__file__).resolve().parents[1]
    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    cfg.update(fmriprep_dir=str(tmp_path / "in"), output_dir=str(tmp_path / "o"),
               bids_dir=None)
    f = tmp_path / "in.txt"
    f.write_text("x")
    st_ = Stamps(tmp_path / "o", cfg)
    for rule in RULE_CONFIG:
        try:
            want = st_.content(rule, [f, tmp_path / "missing \"file\"\n.nii.gz"])
        except KeyError:  # a key this configuration has not got (stage 1 rules)
            continue
        assert st_._text(want) == json.dumps(want, indent=1, sort_keys=True), rule
        path = Path(st_.stamp(rule, "sub-01/func/sub-01_task-rest", [f]))
        assert path.read_text() == json.dumps(st_.content(rule, [f]), indent=1,
                                              sort_keys=True) + "\n"
