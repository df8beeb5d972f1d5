"""Snakemake adapter: per-subject HTML report + JSON twin (tmstarget.report.subject_report_step)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # noqa: F821

from tmstarget.provenance import strict_config
from tmstarget.report import subject_report_step
from tmstarget.smk import run_step

sm = snakemake  # noqa: F821
run_step(sm, subject_report_step, target_json=sm.input.coords, rmap_path=sm.input.rmap,
         region_path=sm.input.region, qc_path=sm.input.qc, seed_tsv=sm.input.seed_tsv,
         cfg=strict_config(sm.params.cfg, sm.config, "report"),
         output_root=sm.params.output_root, out_html=sm.output.html, out_json=sm.output.json, repro_json=sm.input.get("repro"),
         cloud_tsv=sm.input.get("cloud"), 
         native_json=sm.input.get("native"), native_note=sm.params.native_note)
