"""BRAINAGE_STRICT_TESTS=1 (CI) turns every kind of skip into a failure that keeps its reason;
without it the same tests skip and say why (tests/conftest.py ``pytest_runtest_makereport``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent

SKIPPING = '''
import pytest

def test_skip_call():
    pytest.skip("no slurmctld here")

@pytest.mark.skipif(True, reason="minc-tools absent")
def test_skipif():
    pass

def test_importorskip():
    pytest.importorskip("no_such_module_brainage")

@pytest.fixture
def cluster():
    pytest.skip("fixture cannot start SLURM")

def test_fixture_skip(cluster):
    pass

@pytest.mark.xfail(reason="known", strict=False)
def test_xfail():
    assert False

def test_passes():
    pass
'''


def _run(tmp_path: Path, strict: bool) -> subprocess.CompletedProcess:
    (tmp_path / "conftest.py").write_text(  # the project's hook, loaded under another module name
        "import importlib.util\n"
        f"spec = importlib.util.spec_from_file_location('project_conftest', {str(HERE / 'conftest.py')!r})\n"
        "project = importlib.util.module_from_spec(spec)\nspec.loader.exec_module(project)\n"
        "pytest_runtest_makereport = project.pytest_runtest_makereport\n")
    (tmp_path / "test_skipping.py").write_text(SKIPPING)
    env = {k: v for k, v in os.environ.items() if k != "BRAINAGE_STRICT_TESTS"}
    if strict:
        env["BRAINAGE_STRICT_TESTS"] = "1"
    return subprocess.run([sys.executable, "-m", "pytest", "-ra", "-p", "no:cacheprovider", "-q", str(tmp_path)],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)


@pytest.mark.parametrize("strict", [False, True], ids=["laptop", "ci"])
def test_skips_fail_with_their_reason_only_when_strict(tmp_path, strict):
    out = _run(tmp_path, strict)
    text = out.stdout + out.stderr
    reasons = ["no slurmctld here", "minc-tools absent", "no_such_module_brainage", "fixture cannot start SLURM"]
    for reason in reasons:
        assert reason in text, text
    last = text.strip().splitlines()[-1]
    if strict:
        assert out.returncode == 1, text
        assert "2 failed, 1 passed, 1 xfailed, 2 errors" in last, text  # skips in setup: errors
        assert text.count("skipped under BRAINAGE_STRICT_TESTS=1") >= len(reasons), text
    else:
        assert out.returncode == 0, text
        assert "1 passed, 4 skipped, 1 xfailed" in last, text
