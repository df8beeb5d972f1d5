"""Snakemake adapter: pre/post engagement of one participant (tmstarget.trial.engagement_step)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # noqa: F821

from tmstarget.provenance import strict_config  # noqa: E402
from tmstarget.smk import run_step  # noqa: E402
from tmstarget.trial import engagement_step  # noqa: E402

sm = snakemake  # noqa: F821
run_step(sm, engagement_step, pre_npz=list(sm.input.pre_runs), post_npz=list(sm.input.post_runs),
         pre_target_json=sm.input.pre_target, pre_map=sm.input.pre_map,
         post_map=sm.input.post_map, participant=sm.params.participant,
         pre_session=sm.params.pre, post_session=sm.params.post,
         cfg=strict_config(sm.params.cfg, sm.config, sm.rule), out_tsv=sm.output.tsv,
         out_json=sm.output.sidecar, output_root=sm.params.output_root)
