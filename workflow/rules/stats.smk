# Stage 'stats': see README.md. Rules are added by the issue that builds this stage.


rule stats_all:
    input:
        [],
