"""Snakemake adapter: one participant through the built-in ANTsPy preprocessing."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # noqa: F821

from tmstarget.builtin import preprocess_participant  # noqa: E402
from tmstarget.smk import run_step  # noqa: E402

sm = snakemake  # noqa: F821
run_step(sm, preprocess_participant, bids_dir=sm.params.bids_dir,
         out_root=sm.params.output_dir, participant=sm.wildcards.participant,
         done=sm.output.done, cfg=sm.config["preprocessing"].get("builtin") or {},
         task=sm.config["task"], threads=sm.threads)
