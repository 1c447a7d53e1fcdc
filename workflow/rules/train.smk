# Stage 'train': see README.md. Rules are added by the issue that builds this stage.


rule train_all:
    input:
        [],
