"""Package, command line, config schema, provenance hashes, and the workflow's static checks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from snakemake.utils import validate

from brainage import __version__
from brainage.config import resolved_config
from brainage.core.io import atomic_path

REPO = Path(__file__).resolve().parents[1]
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"


def run(*cmd, **kwargs):
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, **kwargs)


def test_console_script_version():
    out = run("brainage", "--version")
    assert out.returncode == 0 and out.stdout.strip() == f"brainage {__version__}"


def test_unknown_command_is_rejected():
    out = run("brainage", "bogus")
    assert out.returncode == 2 and "unknown command 'bogus'" in out.stderr


def test_default_config_is_valid():
    validate(resolved_config(root=REPO), str(SCHEMA))  # the demo over config/defaults.yaml


def test_missing_key_names_the_key():
    config = resolved_config(root=REPO)
    del config["preprocess"]
    with pytest.raises(Exception, match="'preprocess' is a required property"):
        validate(config, str(SCHEMA))


def test_bad_engine_stops_before_any_job_with_the_allowed_values():
    out = run("snakemake", "-n", "--cores", "1", "--config", "preprocess={engine: bogus, grids: [4]}")
    assert out.returncode != 0
    err = out.stdout + out.stderr
    assert "config preprocess.engine: 'bogus' is not one of native, minc" in err


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.nii.gz"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            assert tmp.name.endswith(".nii.gz")
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
    with atomic_path(target) as tmp:
        tmp.write_text("whole")
    assert target.read_text() == "whole" and list(tmp_path.iterdir()) == [target]


def test_code_hash_follows_the_module_source(tmp_path, monkeypatch):
    pkg = tmp_path / "fakepkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("x = 1\n")
    (pkg / "b.py").write_text("y = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    script = "import sys; from brainage.core.provenance import code_hash; print(code_hash(*sys.argv[1:]))"

    def digest(*modules):
        return subprocess.run([sys.executable, "-c", script, *modules], env={"PYTHONPATH": str(tmp_path)},
                              capture_output=True, text=True, check=True).stdout.strip()

    before_a, before_b = digest("fakepkg.a"), digest("fakepkg.b")
    (pkg / "a.py").write_text("x = 2\n")
    assert digest("fakepkg.a") != before_a
    assert digest("fakepkg.b") == before_b


def test_snakefmt_check():
    files = ["Snakefile", *sorted(str(p.relative_to(REPO)) for p in (REPO / "workflow" / "rules").glob("*.smk"))]
    out = run("snakefmt", "--check", *files)
    assert out.returncode == 0, out.stdout + out.stderr


def test_dry_run_prints_a_dag():
    out = run("snakemake", "-n", "--cores", "all")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "rule resources" in out.stdout or "resources" in out.stdout


def test_lint_has_no_errors():
    out = run("snakemake", "--lint", "--cores", "1")
    # --lint exits 1 when it has suggestions; errors (a broken workflow) are tracebacks.
    assert "Traceback" not in out.stderr and "Error" not in out.stdout.split("Lints for")[0], out.stdout + out.stderr
