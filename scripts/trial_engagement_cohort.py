"""Snakemake adapter: cohort engagement table by arm (tmstarget.trial.engagement_cohort_step)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # noqa: F821

from tmstarget.provenance import strict_config  # noqa: E402
from tmstarget.smk import run_step  # noqa: E402
from tmstarget.trial import engagement_cohort_step  # noqa: E402

sm = snakemake  # noqa: F821
cfg = strict_config(sm.params.cfg, sm.config, sm.rule)
run_step(sm, engagement_cohort_step, tsvs=list(sm.input.tsvs), key_path=sm.input.key,
         unblind=bool(cfg["trial"]["unblind"]), skipped=list(sm.params.skipped),
         out_tsv=sm.output.tsv, out_json=sm.output.sidecar)
