"""The conda environments (envs/*.yaml, `--sdm conda`) pin the versions the package is tested with."""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
ENVS = sorted((REPO / "envs").glob("*.yaml"))


def pins(env: dict) -> dict[str, str]:
    """name -> version of the `pip:` section's `name==version` lines."""
    out = {}
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            for line in dep.get("pip", []):
                name, version = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([^\s;]+)", line).groups()
                out[name] = version
    return out


def test_the_three_rule_families_have_an_environment():
    assert {p.stem for p in ENVS} >= {"imaging", "torch", "stats"}


@pytest.mark.parametrize("path", ENVS, ids=lambda p: p.stem)
def test_environment_pins_the_installed_versions(path):
    env = yaml.safe_load(path.read_text())
    assert "python=3.11" in env["dependencies"], "the package requires Python 3.11"
    pinned = pins(env)
    assert pinned, f"{path.name} pins nothing"
    for name, version in pinned.items():
        installed = metadata.version(name).split("+")[0]  # torch 2.13.0+cpu is the CPU build of 2.13.0
        assert version == installed, f"{path.name}: {name}=={version}, tested with {installed}"


def test_every_import_of_the_library_is_covered():
    """Each third-party distribution the package depends on is in at least one environment."""
    required = metadata.requires("brainage-rnc") or []
    names = {re.split(r"[<>=!~ ;\[]", r, maxsplit=1)[0].lower() for r in required if "extra ==" not in r}
    names -= {"snakemake", "snakemake-executor-plugin-slurm"}  # the runner, not a rule's environment
    covered = set()
    for path in ENVS:
        covered |= {n.lower() for n in pins(yaml.safe_load(path.read_text()))}
    assert names <= covered, f"not in any environment: {sorted(names - covered)}"
