"""Which code produced an output: hashes of library modules, used as Snakemake params.

Snakemake reruns a job when its script file changes, but not when a library module that
script imports changes. Each rule therefore passes ``code=script_code("train_model.py")`` (a
hash of every library module that script can import, found by reading the imports, see
:func:`import_closure`) as a param: editing ``losses.py`` changes the param of the training
rules (and only theirs), and ``--rerun-triggers params`` (on by default) reruns them and their
downstream.
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


def _imports_of(path: Path, package: str | None) -> set[str]:
    """Every module a source file imports, at any depth (in functions too), absolute names."""
    import ast

    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolved against the file's package
                base = package.split(".")[: len(package.split(".")) - node.level + 1] if package else []
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            # `from brainage.report import stats` imports the submodule brainage.report.stats
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def import_closure(script: str | Path, library: str = "brainage") -> tuple[list[str], list[str]]:
    """What running ``script`` can import: (library modules, top-level third-party modules).

    Static and deliberately wide: the imports of the script and, transitively, of every
    library module it reaches, including imports inside functions (lazy imports count, since
    a rule may call the function). Names that are not modules (``from x import function``)
    are dropped for the library and kept as their top-level package otherwise.
    """
    import sys

    seen: set[str] = set()
    third: set[str] = set()
    todo = [(Path(script), None)]
    while todo:
        path, package = todo.pop()
        for name in _imports_of(path, package):
            top = name.split(".")[0]
            if top != library:
                if top and top not in sys.stdlib_module_names and top != "__future__":
                    third.add(top)
                continue
            if name in seen:
                continue
            spec = importlib.util.find_spec(name) if _parent_is_package(name) else None
            if spec is None or spec.origin is None:
                continue  # a function or class imported from a module
            seen.add(name)
            pkg = name if spec.submodule_search_locations else name.rpartition(".")[0]
            todo.append((Path(spec.origin), pkg))
            parent = name.rpartition(".")[0]  # importing a.b.c runs a/__init__ and a/b/__init__
            while parent and parent not in seen:
                seen.add(parent)
                parent_spec = importlib.util.find_spec(parent)
                todo.append((Path(parent_spec.origin), parent))
                parent = parent.rpartition(".")[0]
    return sorted(seen), sorted(third)


def _parent_is_package(name: str) -> bool:
    """find_spec('a.b.f') raises when a.b is a module, not a package; say no instead."""
    parent = name.rpartition(".")[0]
    if not parent:
        return True
    try:
        spec = importlib.util.find_spec(parent)
    except (ImportError, ValueError):
        return False
    return spec is not None and spec.submodule_search_locations is not None


@functools.lru_cache(maxsize=None)
def script_code_hash(script: str | Path) -> str:
    """A short hash of the source of every library module a workflow script can import
    (:func:`import_closure`): derived from the script, so the list cannot go stale.

    Each module counts by its own file: a package by its ``__init__.py`` only (the closure
    lists the submodules it reaches), so editing ``losses.py`` changes the hash of the scripts
    that can import it and of no other."""
    library, _ = import_closure(script)
    digest = hashlib.sha256()
    for module in library:
        origin = importlib.util.find_spec(module).origin
        digest.update(module.encode())
        digest.update(Path(origin).read_bytes())
    return digest.hexdigest()[:16]


#: the distributions whose versions decide the results (the rest follow from requirements.lock)
PACKAGES = ("brainage-rnc", "snakemake", "torch", "monai", "antspyx", "simpleitk", "deepbet", "nibabel", "nilearn",
            "numpy", "scipy", "scikit-learn", "pandas", "statsmodels", "matplotlib")


def _cpu_model() -> str:
    """The CPU's model name (Linux), or the platform's processor string."""
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _collapse_batches(threads: dict[str, int]) -> dict[str, int]:
    """Rule -> threads, the numbered batch rules of one stage (``preprocess_b000`` ...) as one
    ``preprocess_b*`` row when they agree, and the aggregate ``*_all`` rules left out."""
    import re

    out: dict[str, set[int]] = {}
    for rule, n in sorted(threads.items()):
        if rule == "all" or rule.endswith("_all"):
            continue
        out.setdefault(re.sub(r"_b\d+$", "_b*", rule), set()).add(n)
    return {rule: ns.pop() if len(ns) == 1 else sorted(ns) for rule, ns in out.items()}


def run_record(config: dict, code: dict[str, str], threads: dict[str, int], itk_threads: int | None) -> dict:
    """What a run's results came from, for ``results/provenance.json``: package versions, the
    config as run (all layers merged), the code hash of every rule's script, seeds, the threads
    each rule ran on, ITK's thread count in preprocessing, the engine and the host.

    ``code``: script -> :func:`script_code_hash`; ``threads``: rule -> threads as the workflow
    (and its profile) set them; ``itk_threads``: brainage.preprocess.settings.ITK_THREADS. Torch-free: the host's GPUs are not probed here (each model card
    records the device it trained on)."""
    import os
    import platform
    from importlib import metadata

    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "packages": {"python": platform.python_version(), **versions},
        "seed": config.get("seed"),
        "preprocess_engine": (config.get("preprocess") or {}).get("engine"),
        "itk_threads_in_preprocessing": itk_threads,
        "threads": _collapse_batches(threads),
        "code": dict(sorted(code.items())),
        "host": {"name": platform.node(), "system": platform.platform(), "cpu": _cpu_model(),
                 "cpus": os.cpu_count(), "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")},
        "config": config,
    }
