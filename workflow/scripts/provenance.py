"""results/provenance.json and its report table (brainage.core.provenance, brainage.report.provenance)."""

from brainage.core.io import write_json
from brainage.core.logs import redirect_to_log
from brainage.core.provenance import run_record
from brainage.report.provenance import provenance_table

with redirect_to_log(snakemake.log[0]):
    record = run_record(snakemake.params.config, snakemake.params.scripts, snakemake.params.threads,
                        snakemake.params.itk_threads)
    write_json(snakemake.output.json, record)
    provenance_table(record).write(html_path=snakemake.output.html)
