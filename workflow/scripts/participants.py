"""Validate the user's participants manifest and write the study's copy.

The scans are not opened here: each is checked by its own preprocessing job, which excludes a
bad scan with its reason (results/qc/excluded.tsv) while the others go on; a missing file
stops the DAG before any job. `brainage manifest --check` checks them all before a run.
"""

from snakemake.utils import validate

from brainage.core.logs import redirect_to_log
from brainage.data.manifest import read_manifest, summary, write_manifest

with redirect_to_log(snakemake.log[0]) as log:
    frame = read_manifest(snakemake.input.manifest, check_files=False)
    validate(frame, snakemake.params.schema)
    write_manifest(frame, snakemake.output[0], check_files=False)
    log.info("%s: %s", snakemake.output[0], summary(frame))
