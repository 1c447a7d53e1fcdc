# Stage 'preprocess': see README.md. Rules are added by the issue that builds this stage.


rule preprocess_all:
    input:
        [],
