# Stage 'infer': see README.md. Rules are added by the issue that builds this stage.


rule infer_all:
    input:
        [],
