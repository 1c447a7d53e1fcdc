"""brainage.data.manifest validates rows with row numbers and file checks; the rules that write the
manifest apply workflow/schemas/participants.schema.yaml. The two state the same rules: checked
here against each other, and both against the same bad rows."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import jsonschema
import pandas as pd
import pytest
import yaml

from brainage.data import manifest

REPO = Path(__file__).resolve().parents[1]
SCHEMA = yaml.safe_load((REPO / "workflow" / "schemas" / "participants.schema.yaml").read_text())


def test_columns_enums_and_ranges_are_the_schemas():
    props = SCHEMA["properties"]
    assert set(props) == set(manifest.COLUMNS)
    assert set(SCHEMA["required"]) == set(manifest.REQUIRED)
    assert props["cohort"]["enum"] == list(manifest.COHORTS)
    assert props["sex"]["enum"] == list(manifest.SEXES)
    assert (props["age"]["minimum"], props["age"]["maximum"]) == manifest.AGE_RANGE
    for score, (low, high) in manifest.SCORE_RANGES.items():
        assert (props[score]["minimum"], props[score]["maximum"]) == (low, high), score
    assert re.fullmatch(props["participant_id"]["pattern"], "sub-IXI012")
    assert manifest.check_participant_id("sub-IXI012") == "sub-IXI012"


ROW = {"participant_id": "sub-01", "dataset": "X", "cohort": "HC", "age": 40.0, "sex": "F", "t1w": "a.nii.gz",
       "adas_cog11": None, "updrs3": None, "hoehn_yahr": None, "session": None}


@pytest.mark.parametrize("bad", [{"cohort": "MCI"}, {"sex": "X"}, {"age": 130.0}, {"age": -1.0}, {"updrs3": 200.0},
                                 {"hoehn_yahr": 6.0}, {"adas_cog11": 71.0}, {"participant_id": "sub_01"}])
def test_a_bad_row_is_refused_by_both(bad):
    row = {**ROW, **bad}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(row, SCHEMA)
    frame = pd.DataFrame([{k: ("n/a" if v is None else v) for k, v in row.items()}])
    assert manifest.validate(frame, check_files=False), f"brainage.data.manifest accepts {bad}"
    jsonschema.validate(ROW, SCHEMA)
    assert not manifest.validate(pd.DataFrame([{k: ("n/a" if v is None else v) for k, v in ROW.items()}]), check_files=False)


def test_every_importer_is_on_the_command_line():
    """The CLI is built from manifest.IMPORTERS: each source's options exist and pair up."""
    parser = manifest.cli._parser()
    flags = {a for action in parser._actions for a in action.option_strings}
    for imp in manifest.IMPORTERS:
        assert imp.table[0] in flags and (imp.folder is None or imp.folder[0] in flags)
        assert {o for o, _, _ in imp.options} <= flags
        args = parser.parse_args([])
        assert not imp.given(args) and isinstance(args, argparse.Namespace)
