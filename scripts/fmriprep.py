"""Snakemake adapter: one participant through the fMRIPrep container (tmstarget.preproc)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # noqa: F821

from tmstarget.preproc import run_fmriprep  # noqa: E402
from tmstarget.provenance import strict_config  # noqa: E402
from tmstarget.smk import run_step  # noqa: E402

sm = snakemake  # noqa: F821
run_step(sm, run_fmriprep, bids_dir=sm.params.bids_dir, output_dir=sm.params.output_dir,
         work_dir=sm.params.work_dir, participant=sm.wildcards.participant,
         done=sm.output.done, cfg=strict_config(sm.params.cfg, sm.config, "fmriprep")["preprocessing"],
         task=sm.params.cfg["task"],
         threads=sm.threads, mem_mb=sm.resources.mem_mb)
