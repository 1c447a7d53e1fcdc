"""The layers point down: cohort -> preprocess -> train -> apply (infer, explain, predict) ->
report (stats, tables, figures, report). Checked on the imports the code can reach, imports
inside functions included (brainage.provenance.import_closure), so a lazy import counts."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from brainage import TEMPLATE_SPACE
from brainage.provenance import import_closure

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src" / "brainage"
APPLY = ("infer", "explain", "predict")
REPORT = ("stats", "tables", "figures", "report")


@pytest.mark.parametrize("module", APPLY + REPORT)
def test_apply_and_report_never_reach_the_trainer(module):
    library, _ = import_closure(SRC / f"{module}.py")
    assert "brainage.train" not in library, f"brainage.{module} can import the training engine"


@pytest.mark.parametrize("module", REPORT)
def test_report_side_never_reaches_torch(module):
    library, third_party = import_closure(SRC / f"{module}.py")
    assert "torch" not in third_party and "monai" not in third_party, (
        f"brainage.{module} can import torch through {sorted(m for m in library)}"
    )


def test_no_function_over_100_lines():
    long = []
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 100:
                long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)")
    assert not long, long


def _code_strings(path: Path):
    """String constants of a Python file that are not docstrings."""
    tree = ast.parse(path.read_text())
    docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                  if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))
                  and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    return [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
            and id(n) not in docstrings]


def test_template_space_is_spelled_once():
    places = [str(p.relative_to(REPO)) for p in sorted(SRC.rglob("*.py")) for s in _code_strings(p) if TEMPLATE_SPACE in s]
    for smk in sorted((REPO / "workflow").rglob("*.smk")) + sorted((REPO / "workflow" / "scripts").glob("*.py")):
        code = [line for line in smk.read_text().splitlines() if not line.lstrip().startswith("#")]
        places += [str(smk.relative_to(REPO))] * sum(TEMPLATE_SPACE in line for line in code)
    assert places == ["src/brainage/__init__.py"], places


def test_model_keys_are_the_schemas():
    """brainage.spec defines a model entry's keys and defaults; the config schema allows those keys."""
    from brainage import spec

    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
    entry = schema["properties"]["models"]["additionalProperties"]
    assert set(entry["properties"]) == set(spec.KEYS)
    for key, names in spec.NESTED_KEYS.items():
        assert set(entry["properties"][key]["properties"]) == set(names), key
    # a network's own required keys (loss, NETWORK_REQUIRED) are checked by spec.entry_problems
    assert set(entry["required"]) == set(spec.REQUIRED)
    assert set(spec.CLASSICAL_BACKBONES) <= set(entry["properties"]["backbone"]["enum"])


def test_script_code_hash_follows_only_what_the_script_can_import(tmp_path):
    """Editing losses.py changes the code hash of the training script, not of preprocessing or a
    figure (a package counts by its __init__.py, not by every module inside it)."""
    import os
    import shutil
    import subprocess
    import sys

    shutil.copytree(SRC.parent, tmp_path / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    scripts = REPO / "workflow" / "scripts"
    names = ("train_model.py", "preprocess_native.py", "fig6_bag_violin.py", "predict_cohort.py")
    code = ("import sys; from brainage.provenance import script_code_hash; "
            f"print(*(script_code_hash('{scripts}/' + n) for n in sys.argv[1:]))")

    def hashes():
        env = {**os.environ, "PYTHONPATH": str(tmp_path / "src")}
        out = subprocess.run([sys.executable, "-c", code, *names], env=env, capture_output=True, text=True, check=True)
        return dict(zip(names, out.stdout.split()))

    before = hashes()
    losses = tmp_path / "src" / "brainage" / "losses.py"
    losses.write_text(losses.read_text() + "\n# edited\n")
    after = hashes()
    assert after["train_model.py"] != before["train_model.py"]
    for name in names[1:]:
        assert after[name] == before[name], f"editing losses.py changed the code hash of {name}"
