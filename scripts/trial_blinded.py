"""Snakemake adapter: blinded navigator files of one participant (tmstarget.trial.blinded_step)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # noqa: F821

from tmstarget.provenance import strict_config  # noqa: E402
from tmstarget.smk import run_step  # noqa: E402
from tmstarget.trial import blinded_step  # noqa: E402

sm = snakemake  # noqa: F821
cfg = strict_config(sm.params.cfg, sm.config, sm.rule)
run_step(sm, blinded_step, coilpose_json=sm.input.coilpose, t1w=sm.input.t1w,
         output_dir=sm.params.output_root, participant_id=sm.params.participant,
         session_id=sm.params.session, code=sm.params.code, arm=sm.params.arm,
         method=cfg["trial"]["arms"][sm.params.arm], unblinded_json=sm.output.record,
         sphere_radius_mm=float(cfg["native"]["sphere_radius_mm"]),
         localite_space=cfg["native"]["localite_space"])
