"""The tree shows the pipeline and its imports point one way: core -> data (cohort) ->
preprocess -> models -> train -> apply (infer, explain, predict) -> report (stats, tables,
figures), with the command line and the config as a whole (``brainage.cli``,
``brainage.config``) at the edge. Checked on every import the code holds, imports inside
functions included, so a lazy import counts."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from brainage import TEMPLATE_SPACE
from brainage.core.provenance import import_closure

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src" / "brainage"
#: the stages, bottom to top: a module may import its own stage and those below it
STAGES = ("core", "data", "preprocess", "models", "train", "apply", "report")
EDGE = ("brainage.cli", "brainage.config")


def _module_name(path: Path, src: Path = SRC) -> str:
    parts = path.relative_to(src.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules(src: Path = SRC) -> dict[str, Path]:
    return {_module_name(p, src): p for p in sorted(src.rglob("*.py"))}


def import_graph(src: Path = SRC) -> dict[str, set[str]]:
    """Library module -> the library modules it imports anywhere in its file (a function's
    import counts). ``from a.b import c`` is an edge to ``a.b.c`` when that is a module, else to
    ``a.b``; the package ``__init__`` that Python runs on the way is not an edge of its own."""
    modules = _modules(src)
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            else:
                continue
            edges |= {t for t in targets if t in modules and t != name}
        graph[name] = edges
    return graph


def stage_of(module: str) -> int:
    """Rank of a module's stage; the package root (TEMPLATE_SPACE, version) counts as core."""
    if module in EDGE:
        return len(STAGES)
    parts = module.split(".")
    if len(parts) == 1:
        return 0
    assert parts[1] in STAGES, f"{module} is in no stage subpackage ({', '.join(STAGES)}) and not at the edge"
    return STAGES.index(parts[1])


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of two or more modules (Tarjan), each as a sorted list."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_import_graph_has_no_cycle():
    assert cycles(import_graph()) == []


def test_imports_point_down_the_stages():
    against = [f"{a} -> {b}" for a, targets in sorted(import_graph().items()) for b in sorted(targets)
               if stage_of(b) > stage_of(a)]
    assert not against, against


def test_the_graph_test_sees_a_cycle_and_an_upward_import(tmp_path):
    """The checks above on a tree made wrong on purpose: a lazy import from core up to the
    report, and two modules importing each other inside functions."""
    pkg = tmp_path / "brainage"
    for sub in ("", "core", "report"):
        (pkg / sub).mkdir(parents=True, exist_ok=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "core" / "a.py").write_text("def f():\n    from brainage.report import b\n")
    (pkg / "report" / "b.py").write_text("def g():\n    from brainage.core.a import f\n")
    graph = import_graph(pkg)
    assert graph["brainage.core.a"] == {"brainage.report.b"}
    assert cycles(graph) == [["brainage.core.a", "brainage.report.b"]]
    assert stage_of("brainage.report.b") > stage_of("brainage.core.a")


def test_every_module_sits_in_a_stage():
    for name in _modules():
        stage_of(name)


APPLY = sorted(m for m in _modules() if m.startswith("brainage.apply."))
REPORT = sorted(m for m in _modules() if m.startswith("brainage.report."))


@pytest.mark.parametrize("module", APPLY + REPORT)
def test_apply_and_report_never_reach_the_trainer(module):
    library, _ = import_closure(_modules()[module])
    assert not [m for m in library if m.startswith("brainage.train")], f"{module} can import the training engine"


@pytest.mark.parametrize("module", REPORT)
def test_report_side_never_reaches_torch(module):
    library, third_party = import_closure(_modules()[module])
    assert "torch" not in third_party and "monai" not in third_party, (
        f"{module} can import torch through {sorted(m for m in library)}"
    )


def test_no_module_over_500_lines():
    long = [f"{p.relative_to(REPO)} ({n} lines)" for p in sorted(SRC.rglob("*.py"))
            if (n := len(p.read_text().splitlines())) > 500]
    assert not long, long


def test_no_function_over_80_lines():
    long = []
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 80:
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
    """brainage.models.spec defines a model entry's keys and defaults; the config schema allows those keys."""
    from brainage.models import spec

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
    code = ("import sys; from brainage.core.provenance import script_code_hash; "
            f"print(*(script_code_hash('{scripts}/' + n) for n in sys.argv[1:]))")

    def hashes():
        env = {**os.environ, "PYTHONPATH": str(tmp_path / "src")}
        out = subprocess.run([sys.executable, "-c", code, *names], env=env, capture_output=True, text=True, check=True)
        return dict(zip(names, out.stdout.split()))

    before = hashes()
    losses = tmp_path / "src" / "brainage" / "train" / "losses.py"
    losses.write_text(losses.read_text() + "\n# edited\n")
    after = hashes()
    assert after["train_model.py"] != before["train_model.py"]
    for name in names[1:]:
        assert after[name] == before[name], f"editing losses.py changed the code hash of {name}"
