rule resources:
    output:
        resource_files(),
    log:
        "logs/resources/resources.log",
    benchmark:
        "logs/resources/resources.benchmark.tsv"
    conda:
        "../../envs/imaging.yaml"
    params:
        grids=GRIDS,
        code=script_code("resources.py"),
    script:
        "../scripts/resources.py"
