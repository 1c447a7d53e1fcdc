rule resources:
    output:
        resource_files(),
    log:
        "logs/resources/resources.log",
    conda:
        "../../envs/imaging.yaml"
    params:
        grids=GRIDS,
        code=script_code("resources.py"),
    script:
        "../scripts/resources.py"
