"""Snakemake adapter: one participant through the built-in ANTsPy preprocessing."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # noqa: F821

from tmstarget.builtin import preprocess_participant  # noqa: E402
from tmstarget.provenance import strict_config  # noqa: E402
from tmstarget.smk import run_step  # noqa: E402

sm = snakemake  # noqa: F821
cfg = strict_config(sm.params.cfg, sm.config, "builtin_preproc")
run_step(sm, preprocess_participant, bids_dir=sm.params.bids_dir,
         out_root=sm.params.output_dir, participant=sm.wildcards.participant,
         done=sm.output.done, cfg=cfg["preprocessing"]["builtin"], task=cfg["task"],
         threads=sm.threads)
