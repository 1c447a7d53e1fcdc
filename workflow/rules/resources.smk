rule resources:
    output:
        resource_files(),
    log:
        "logs/resources/resources.log",
    conda:
        "../../envs/imaging.yaml"
    params:
        grids=GRIDS,
        code=code_hash("brainage.atlases", "brainage.grids"),
    script:
        "../scripts/resources.py"
