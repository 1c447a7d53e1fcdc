rule resources:
    output:
        resource_files(),
    log:
        "logs/resources/resources.log",
    params:
        grids=GRIDS,
        code=code_hash("brainage.atlases", "brainage.grids"),
    script:
        "../scripts/resources.py"
