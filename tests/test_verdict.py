"""The per-participant verdict (tmstarget.verdict): absolute thresholds, hand-computed numbers."""
from __future__ import annotations

import numpy as np
import pytest
import yaml
from pathlib import Path

from tmstarget.verdict import (data_warnings, method_verdict, participant_warnings,
                               thresholds, unit_verdict, warn_thresholds)

LIMITS = {"max_split_half_mm": 6.5, "min_split_half_map_r": 0.3, "max_bootstrap_radius_mm": 10.0}
WARN = {"warn_retained_minutes": 5.0, "warn_fd_mean_mm": 0.25, "warn_censored_fraction": 0.2}
SCHEMA = Path(__file__).resolve().parents[1] / "workflow" / "schemas" / "config.schema.yaml"


def test_schema_defaults_are_the_documented_numbers():
    props = yaml.safe_load(SCHEMA.read_text())["properties"]
    rp, dp = props["reproducibility"]["properties"], props["denoise"]["properties"]
    assert rp["max_split_half_mm"]["default"] == 6.5
    assert rp["min_split_half_map_r"]["default"] == 0.3
    assert rp["max_bootstrap_radius_mm"]["default"] == 10
    # the reference figures are cited where the user reads the key
    assert "4.5 mm" in rp["max_split_half_mm"]["description"]
    assert "13 mm" in rp["max_split_half_mm"]["description"]
    assert (dp["warn_retained_minutes"]["default"], dp["warn_fd_mean_mm"]["default"],
            dp["warn_censored_fraction"]["default"]) == (5, 0.25, 0.2)
    # the module's fallbacks are the schema's defaults
    assert thresholds({}) == LIMITS and warn_thresholds({}) == WARN


def test_split_half_distance_from_two_points():
    # half A at (-40, 30, 30), half B at (-44, 33, 30): distance sqrt(16 + 9) = 5.0 mm
    d = float(np.linalg.norm(np.subtract([-40, 30, 30], [-44, 33, 30])))
    assert d == 5.0
    v = method_verdict(d, 0.5, 4.0, LIMITS)
    assert v["verdict"] == "reliable" and v["reasons"] == []
    # (-40, 30, 30) vs (-46, 33, 32): sqrt(36 + 9 + 4) = 7.0 mm > 6.5
    d = float(np.linalg.norm(np.subtract([-40, 30, 30], [-46, 33, 32])))
    assert d == 7.0
    v = method_verdict(d, 0.5, 4.0, LIMITS)
    assert v["verdict"] == "unreliable"
    assert v["reasons"] == ["split-half distance 7.0 mm exceeds 6.5 mm"]


@pytest.mark.parametrize("d,r,b,word,n_reasons", [
    (6.5, 0.3, 10.0, "reliable", 0),      # on every limit: not above / below it
    (6.51, 0.3, 10.0, "unreliable", 1),
    (1.0, 0.29, 1.0, "unreliable", 1),
    (1.0, 0.9, 10.01, "unreliable", 1),
    (9.0, 0.1, 25.0, "unreliable", 3),
    (None, 0.9, 1.0, "unreliable", 1),    # no target in one half
    (1.0, 0.9, None, "unreliable", 1),    # no bootstrap target
    (1.0, None, 1.0, "reliable", 0),      # no map of its own: noted, not a reason
    (1.0, float("nan"), 1.0, "reliable", 0),
])
def test_thresholds(d, r, b, word, n_reasons):
    v = method_verdict(d, r, b, LIMITS)
    assert v["verdict"] == word and len(v["reasons"]) == n_reasons
    if r is None or r != r:
        assert v["notes"]


def test_stricter_config_flips_the_same_numbers():
    cfg = {"reproducibility": {"max_split_half_mm": 4.0, "min_split_half_map_r": 0.3,
                               "max_bootstrap_radius_mm": 10.0}}
    assert method_verdict(5.0, 0.5, 4.0, thresholds(cfg))["verdict"] == "unreliable"
    assert method_verdict(5.0, 0.5, 4.0, LIMITS)["verdict"] == "reliable"


def _qc(fd_mean, n_vol, n_cens, retained_s):
    return {"retained_volumes": n_vol - n_cens, "retained_seconds": retained_s,
            "runs": [{"inputs": [{"path": "/x/sub-01_task-rest_bold.nii.gz"}],
                      "n_volumes": n_vol, "n_censored": n_cens, "fd_mean": fd_mean}]}


def test_data_warnings_hand_computed():
    # 150 volumes, 20 censored = 13 %, mean FD 0.1 mm, 130 x 2 s = 260 s = 4.33 min < 5 min
    w = data_warnings(_qc(0.1, 150, 20, 260.0), WARN)
    assert len(w) == 1 and "4.3 min" in w[0] and "less than 5 min" in w[0]
    # same run at 2.5 s: 325 s = 5.42 min: no warning
    assert data_warnings(_qc(0.1, 150, 20, 325.0), WARN) == []
    # 40 of 150 censored = 26.7 % > 20 %
    w = data_warnings(_qc(0.1, 150, 40, 600.0), WARN)
    assert len(w) == 1 and "40 of 150" in w[0] and "27 %" in w[0]
    # mean FD 0.3 > 0.25
    w = data_warnings(_qc(0.3, 150, 0, 600.0), WARN)
    assert len(w) == 1 and "mean FD 0.3 mm" in w[0]
    # the threshold comes from the config: 3 min accepts 4.33 min
    assert data_warnings(_qc(0.1, 150, 20, 260.0), {**WARN, "warn_retained_minutes": 3}) == []
    assert data_warnings({}, WARN) == []


def test_unit_verdict_uses_only_the_participants_numbers():
    repro = {"split_half": {"methods": {"cluster": {"distance_mm": 9.1, "map_r": 0.38},
                                        "classic": {"distance_mm": 2.0, "map_r": 0.38}}},
             "bootstrap": {"methods": {"cluster": {"radius95_mm": 25.4},
                                       "classic": {"radius95_mm": 3.0}}}}
    v = unit_verdict(repro, _qc(0.1, 150, 0, 600.0), {})
    assert v["assessed"] and v["warnings"] == []
    assert v["methods"]["cluster"]["verdict"] == "unreliable"
    assert len(v["methods"]["cluster"]["reasons"]) == 2
    assert v["methods"]["classic"]["verdict"] == "reliable"
    lines = participant_warnings(v, ["edge"], ["nasion estimated"])
    assert lines[0] == "edge" and lines[-1] == "Native space: nasion estimated"
    assert any(s.startswith("The cluster target is unreliable: split-half distance 9.1 mm")
               for s in lines)
    off = unit_verdict(None, _qc(0.1, 150, 0, 200.0), {})
    assert not off["assessed"] and off["methods"] == {} and len(off["warnings"]) == 1
