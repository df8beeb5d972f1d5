# Denoise each run, build each participant/session's seed map, pick targets, aggregate.

localrules:
    aggregate,


rule denoise_run:
    input:
        unpack(get_run_files),
        stamp=stamp_input("denoise_run", "runprefix"),
    output:
        npz=f"{OUT}/work/{{runprefix}}_desc-denoised_timeseries.npz",
    params:
        run=get_run,
        cfg=rule_config("denoise_run", config),
    log:
        f"{OUT}/logs/denoise_run/{{runprefix}}.log",
    group:
        "participant"
    threads: 1
    resources:
        mem_mb=mem_for_bold,
        runtime=runtime_for_bold,
    script:
        "../../scripts/denoise_run.py"


rule seed_map:
    input:
        runs=get_denoised_runs,
        user_seed=get_user_files("seed"),
        stamp=stamp_input("seed_map", "prefix"),
    output:
        rmap=f"{OUT}/{{prefix}}_space-{SPACE}_desc-sgacc_stat-r_boldmap.nii.gz",
        sidecar=f"{OUT}/{{prefix}}_space-{SPACE}_desc-sgacc_stat-r_boldmap.json",
        mask=f"{OUT}/{{prefix}}_space-{SPACE}_desc-analysis_mask.nii.gz",
        seed_tsv=f"{OUT}/{{prefix}}_desc-sgacc_timeseries.tsv",
        qc=f"{OUT}/work/{{prefix}}_desc-seedmap_qc.json",
    params:
        unit=get_unit,
        cfg=rule_config("seed_map", config),
    log:
        f"{OUT}/logs/seed_map/{{prefix}}.log",
    group:
        "participant"
    threads: 1
    resources:
        mem_mb=mem_for_unit,
        runtime=20,
    script:
        "../../scripts/seed_map.py"


rule group_map:
    """Leave-one-out group sgACC map for the seedmap method (target.seedmap.source: cohort)."""
    input:
        rmaps=get_group_map_sources,
        stamp=STAMPS.path("group_map", "cohort"),
    output:
        gmap=f"{OUT}/{{prefix}}_space-{SPACE}_desc-groupsgacc_stat-r_boldmap.nii.gz",
        sidecar=f"{OUT}/{{prefix}}_space-{SPACE}_desc-groupsgacc_stat-r_boldmap.json",
    params:
        unit=get_unit,
        sources=get_group_map_source_dict,
        cfg=rule_config("group_map", config),
    log:
        f"{OUT}/logs/group_map/{{prefix}}.log",
    threads: 1
    resources:
        mem_mb=mem_scaled(2000),
        runtime=10,
    script:
        "../../scripts/group_map.py"


rule target:
    input:
        unpack(get_target_anat),
        rmap=rules.seed_map.output.rmap,
        mask=rules.seed_map.output.mask,
        qc=rules.seed_map.output.qc,
        user_search=get_user_files("search"),
        stamp=stamp_input("target", "prefix"),
        runs=get_data_method_runs,
        group_map=get_group_map_input,
        gm_probseg=get_gm_probseg,
    output:
        coords=f"{OUT}/{{prefix}}_space-{SPACE}_desc-target_coords.json",
        region=f"{OUT}/{{prefix}}_space-{SPACE}_desc-searchregion_mask.nii.gz",
        **SEEDMAP_OUTPUTS,
    params:
        unit=get_unit,
        output_root=OUT,
        cfg=rule_config("target", config),
    log:
        f"{OUT}/logs/target/{{prefix}}.log",
    group:
        TARGETS_GROUP
    threads: 1
    resources:
        mem_mb=mem_scaled(1000),
        runtime=10,
    script:
        "../../scripts/target.py"


rule reproducibility:
    input:
        runs=get_denoised_runs,
        coords=rules.target.output.coords,
        rmap=rules.seed_map.output.rmap,
        mask=rules.seed_map.output.mask,
        region=rules.target.output.region,
        qc=rules.seed_map.output.qc,
        user_seed=get_user_files("seed"),
        stamp=stamp_input("reproducibility", "prefix"),
        group_map=get_group_map_input,
    output:
        stats=f"{OUT}/{{prefix}}_space-{SPACE}_desc-reproducibility_stats.json",
        cloud=f"{OUT}/{{prefix}}_space-{SPACE}_desc-bootstrap_targets.tsv",
    params:
        cfg=rule_config("reproducibility", config),
    log:
        f"{OUT}/logs/reproducibility/{{prefix}}.log",
    group:
        TARGETS_GROUP
    threads: 1
    resources:
        mem_mb=mem_for_unit,
        runtime=30,
    script:
        "../../scripts/reproducibility.py"


rule aggregate:
    input:
        targets=get_target_jsons(),
        repro=get_repro_jsons(),
        stamp=STAMPS.path("aggregate", "cohort"),
    output:
        tsv=f"{OUT}/targets.tsv",
        skipped=f"{OUT}/skipped.tsv",
        description=f"{OUT}/dataset_description.json",
        config=f"{OUT}/tmstarget_config.yaml",
    params:
        skipped=get_skipped(),
        output_root=OUT,
        cfg=rule_config("aggregate", config),
    log:
        f"{OUT}/logs/aggregate.log",
    threads: 1
    resources:
        mem_mb=mem_scaled(500),
        runtime=5,
    script:
        "../../scripts/aggregate.py"
