"""The report's provenance section: ``results/provenance.json`` (brainage.core.provenance.run_record)
as a readable table, one row per fact; the config as run stays in the JSON."""

from __future__ import annotations

import pandas as pd

from brainage.report.tables import Table


def provenance_table(record: dict) -> Table:
    """Package versions, seed, engine, threads, host and code hashes of a run, one row each."""
    rows = [("package", name, version or "not installed") for name, version in record["packages"].items()]
    rows += [("run", "seed", str(record["seed"])), ("run", "preprocessing engine", str(record["preprocess_engine"])),
             ("run", "ITK threads in preprocessing", str(record["itk_threads_in_preprocessing"]))]
    rows += [("host", key, str(value)) for key, value in record["host"].items()]
    rows += [("threads", rule, str(n)) for rule, n in record["threads"].items()]
    rows += [("code hash", script, digest) for script, digest in record["code"].items()]
    data = pd.DataFrame(rows, columns=["what", "name", "value"])
    models = ", ".join(sorted(record["config"].get("models") or {})) or "none"
    notes = [f"Models: {models}. The config as run (every layer merged) is in results/provenance.json, key 'config'."]
    return Table("Provenance: what these results came from", data, data.copy(), notes)
