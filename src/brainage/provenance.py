"""Which code produced an output: hashes of library modules, used as Snakemake params.

Snakemake reruns a job when its script file changes, but not when a library module that
script imports changes. Each rule therefore passes ``code=code_hash("brainage.losses", ...)``
as a param: editing ``losses.py`` changes the param of the training rules (and only theirs),
and ``--rerun-triggers params`` (on by default) reruns them and their downstream.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
from pathlib import Path


@functools.lru_cache(maxsize=None)
def _module_digest(module: str) -> str:
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise ImportError(f"cannot hash module {module!r}: not found")
    files = [Path(spec.origin)]
    if spec.submodule_search_locations:  # a package: every module in it
        files = sorted(Path(list(spec.submodule_search_locations)[0]).rglob("*.py"))
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def code_hash(*modules: str) -> str:
    """A short hash of the source files of ``modules`` (dotted names, packages recurse)."""
    digest = hashlib.sha256()
    for module in sorted(set(modules)):
        digest.update(module.encode())
        digest.update(_module_digest(module).encode())
    return digest.hexdigest()[:16]
