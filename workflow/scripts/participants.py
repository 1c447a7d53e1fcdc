"""Validate the user's participants manifest, T1w files included, and write the study's copy."""

from snakemake.utils import validate

from brainage.logs import redirect_to_log
from brainage.manifest import read_manifest, summary, write_manifest

with redirect_to_log(snakemake.log[0]) as log:
    frame = read_manifest(snakemake.input.manifest, check_files=True)
    validate(frame, snakemake.params.schema)
    write_manifest(frame, snakemake.output[0], check_files=False)  # files were just checked
    log.info("%s: %s", snakemake.output[0], summary(frame))
