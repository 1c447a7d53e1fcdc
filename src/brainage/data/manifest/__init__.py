"""The participants manifest: who is in the study, with which T1w scan, age, sex and scores.

The manifest is one TSV with a header and one row per participant, the single source of
truth of the pipeline (``results/cohort/participants.tsv``; the Snakemake wildcard
``{subject}`` is its ``participant_id``). Columns (``n/a`` where a value does not apply):

    participant_id  ``sub-<alphanumeric label>``, unique
    dataset         where the row came from (IXI, ADNI, PPMI, a BIDS folder name)
    cohort          HC | AD | PD
    age             years at the scan, 0-120
    sex             F | M
    t1w             path of the raw T1-weighted scan (relative paths are relative to the
                    working directory, like every Snakemake path; ``brainage manifest``
                    writes absolute paths)
    adas_cog11      ADAS-Cog-11 total (0-70)
    updrs3          MDS-UPDRS part III total (0-132)
    hoehn_yahr      Hoehn and Yahr stage (0-5)
    session         BIDS session label or visit code of the scan

Importers turn the usual sources into that shape: :func:`from_bids`, :func:`from_ixi`,
:func:`from_adni`, :func:`from_ppmi`; :func:`concat` joins several. Every importer starts
from the scans it finds and joins the demographics to them: a scan without demographics is
kept (and reported by :func:`validate` as a missing age or sex), demographics rows without
a scan are skipped with one warning giving their count and ids, and participants outside the
study's cohorts (ADNI MCI, PPMI SWEDD or prodromal) are skipped (logged). Every importer reads
ids with :func:`parse_participant_id` (a row whose id is not one is refused, naming the row)
and applies one duplicate policy (:func:`.sources._merge_duplicates`: identical rows merged,
conflicting rows refused, all listed). Importers keep values as found; :func:`validate`
reports every problem at once, one line each with row and column, and
:func:`write_manifest` writes nothing unless the manifest is valid.

Modules: :mod:`.schema` (columns and allowed values), :mod:`.cells` (reading one cell),
:mod:`.ids` (participant ids), :mod:`.sources` (what the importers share), one module per
importer (:mod:`.bids`, :mod:`.ixi`, :mod:`.adni`, :mod:`.ppmi`), :mod:`.table` (validation,
reading, writing) and :mod:`.cli` (``brainage manifest``); this package re-exports their public
names.
"""

from __future__ import annotations

from brainage.data.manifest.adni import ADNI_PATTERN, from_adni
from brainage.data.manifest.bids import from_bids
from brainage.data.manifest.cli import IMPORTERS, Importer, main
from brainage.data.manifest.ids import check_participant_id, parse_participant_id
from brainage.data.manifest.ixi import from_ixi
from brainage.data.manifest.ppmi import PPMI_PATTERN, from_ppmi
from brainage.data.manifest.schema import AGE_RANGE, COHORTS, COLUMNS, NA_VALUES, REQUIRED, SCORE_RANGES, SEXES
from brainage.data.manifest.table import check_image, concat, read_manifest, summary, validate, write_manifest

__all__ = [
    "ADNI_PATTERN",
    "AGE_RANGE",
    "COHORTS",
    "COLUMNS",
    "IMPORTERS",
    "Importer",
    "NA_VALUES",
    "PPMI_PATTERN",
    "REQUIRED",
    "SCORE_RANGES",
    "SEXES",
    "check_image",
    "check_participant_id",
    "concat",
    "from_adni",
    "from_bids",
    "from_ixi",
    "from_ppmi",
    "main",
    "parse_participant_id",
    "read_manifest",
    "summary",
    "validate",
    "write_manifest",
]
