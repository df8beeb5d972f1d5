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
