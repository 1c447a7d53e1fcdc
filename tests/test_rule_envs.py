"""Every rule runs in the environment it names: for each envs/*.yaml, a fresh virtual
environment holding only that file's packages imports everything each of its rules' scripts can
import (lazily imported modules included).

What is built is the `pip:` part of each file, at the versions of requirements.lock: conda-forge
is not reachable from these machines, so the conda part (python=3.11 and pip) is the test's own
interpreter. Which modules a script can import comes from a static walk of its imports and,
transitively, of every library module it reaches, imports inside functions included
(`brainage.core.provenance.import_closure`): a lazy import that a rule may reach counts, so the
statistics environment cannot draw a figure through a module that imports torch.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import venv
from pathlib import Path

import pytest
import yaml

from brainage.core.provenance import import_closure

REPO = Path(__file__).resolve().parents[1]
ENVS = sorted((REPO / "envs").glob("*.yaml"))


def rules_by_env() -> dict[str, list[tuple[str, Path]]]:
    """env stem -> [(rule, script)] of every rule with `conda:` and `script:` in workflow/rules.

    Read from the rules files (both branches of `if config...` blocks, e.g. the MINC engine's
    rules, which a parsed workflow only shows for one configuration). A rule made in a loop is
    an anonymous `rule:` named by its `name:`; the report's rules (stats.smk, one per entry of
    brainage.report.targets) have the script `f"../scripts/{target.script_file}"`, which is
    read here for every entry of the registry.
    """
    from brainage.report.targets import TARGETS

    out: dict[str, list[tuple[str, Path]]] = {}
    for smk in sorted((REPO / "workflow" / "rules").glob("*.smk")):
        rule, key, conda, script = None, None, None, None
        for line in smk.read_text().splitlines() + ["rule END:"]:
            m = re.match(r"\s*(?:rule|checkpoint)(?: (\w+))?:", line)
            if m:
                if rule and conda and script:
                    if "{target.script_file}" in script:
                        found = [(t.name, script.replace("{target.script_file}", t.script_file)) for t in TARGETS]
                    else:
                        found = [(rule, script)]
                    out.setdefault(Path(conda).stem, []).extend((r, (smk.parent / s).resolve()) for r, s in found)
                rule, key, conda, script = m.group(1) or "<anonymous>", None, None, None
                continue
            stripped = line.strip()
            if stripped in ("conda:", "script:", "name:"):
                key = stripped[:-1]
            elif key and stripped:
                value = stripped.removeprefix("f").strip("\"'")
                if key == "name":
                    rule = value
                elif key == "conda":
                    conda = value
                else:
                    script = value
                key = None
    return out


def pip_packages(env_file: Path) -> list[str]:
    deps = yaml.safe_load(env_file.read_text())["dependencies"]
    return [line for dep in deps if isinstance(dep, dict) for line in dep.get("pip", [])]


@pytest.fixture(scope="module")
def env_python(tmp_path_factory):
    """env stem -> python of a fresh venv (no system site-packages) holding that env's packages.
    All envs are built at the first call, side by side (CI: 132 s for the three tests against 139
    one after the other)."""
    from concurrent.futures import ThreadPoolExecutor

    made: dict[str, Path] = {}

    def create(env_file: Path) -> Path:
        root = tmp_path_factory.mktemp(f"env-{env_file.stem}")
        venv.create(root, with_pip=True, system_site_packages=False, clear=True)
        python = root / "bin" / "python"
        subprocess.run(
            # --no-compile: the probe imports a handful of torch's thousands of modules
            [python, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-compile",
             "-c", str(REPO / "requirements.lock"), *pip_packages(env_file)],
            check=True, timeout=900,
        )
        return python

    def build(env_file: Path) -> Path:
        if not made:
            with ThreadPoolExecutor(max_workers=len(ENVS)) as pool:
                made.update(zip((e.stem for e in ENVS), pool.map(create, ENVS)))
        return made[env_file.stem]

    return build


PROBE = """
import importlib, json, sys, traceback
failed = {}
for name in json.loads(sys.argv[1]):
    try:
        importlib.import_module(name)
    except Exception as err:
        failed[name] = f"{type(err).__name__}: {err}"
print(json.dumps(failed))
"""


def test_every_env_has_rules():
    assert set(rules_by_env()) == {p.stem for p in ENVS}


@pytest.mark.slow
@pytest.mark.parametrize("env_file", ENVS, ids=lambda p: p.stem)
def test_each_rule_imports_what_it_needs_in_its_own_environment(env_file, env_python):
    rules = rules_by_env()[env_file.stem]
    python = env_python(env_file)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "PYTHONNOUSERSITE": "1"}
    problems = []
    for rule, script in rules:
        library, third_party = import_closure(script)
        # `snakemake` itself comes from the runner: Snakemake's script preamble puts its own
        # package on the job's sys.path (snakemake.common.get_snakemake_searchpaths).
        modules = [m for m in third_party if m != "snakemake"] + library
        out = subprocess.run([python, "-c", PROBE, json.dumps(modules)], env=env, capture_output=True,
                             text=True, timeout=600, check=True)
        for name, error in json.loads(out.stdout).items():
            problems.append(f"rule {rule} ({script.name}): import {name}: {error}")
    assert not problems, f"in {env_file.name}:\n" + "\n".join(problems)


@pytest.mark.slow
def test_the_statistics_environment_has_no_torch(env_python):
    """The report side reads files, not models: its environment does not even hold torch."""
    python = env_python(REPO / "envs" / "stats.yaml")
    out = subprocess.run([python, "-c", "import importlib.util as u; print(u.find_spec('torch') is None)"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"
