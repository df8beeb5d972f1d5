# tmstarget: personalized sgACC-anticorrelated left-DLPFC TMS targets from fMRIPrep derivatives.
# Research use only; not a medical device (see SAFETY.md).
#
#   snakemake --cores 2                                   # the sample data, default config
#   snakemake --configfile my.yaml --cores 8              # your data
#   tmstarget FMRIPREP_DIR OUTPUT_DIR participant ...     # the BIDS-app wrapper
from snakemake.utils import min_version

min_version("9.0")


configfile: os.path.join(workflow.basedir, "config", "config.yaml")


include: "workflow/rules/common.smk"
include: "workflow/rules/targets.smk"
include: "workflow/rules/native.smk"
include: "workflow/rules/trial.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        get_final_outputs(),
        get_trial_outputs(),
        get_engagement_outputs(),
    default_target: True
