"""Atomic file writing and small I/O helpers shared by every stage.

A killed job must never leave a half-written file that Snakemake (or a user) could take for
a finished output: everything is written to a temporary name in the destination folder and
renamed into place, which is atomic on POSIX file systems.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from glob import escape as glob_escape
from pathlib import Path
from typing import Any, Iterator

import numpy as np


class InputError(ValueError):
    """Bad input data: the message is one line naming the subject, the file and the problem."""


def _writable_folder(folder: Path, what: str) -> None:
    """InputError unless ``folder`` exists (or can be made) and is writable."""
    existing = folder
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise InputError(f"{what}: {existing} is a file, not a folder; choose another location")
    try:  # a real write: os.access says yes to root on a read-only mount
        fd, probe = tempfile.mkstemp(prefix=".brainage-write-test.", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise InputError(f"{what}: cannot write in {existing} ({err.strerror}); choose a writable location") from None


def check_output_file(path: str | os.PathLike, what: str = "output") -> Path:
    """``path`` as a Path once it is known to be writable as a file; InputError (one line) if not.

    Called by every command line before any work, so that a wrong ``--out`` fails in a second,
    not after the work it would have saved.
    """
    path = Path(path)
    if path.is_dir() or str(path).endswith(os.sep):
        raise InputError(f"{what}: {path} is a folder; give a file name (e.g. {path / 'participants.tsv'})")
    _writable_folder(path.parent if str(path.parent) else Path("."), what)
    return path


def check_output_dir(path: str | os.PathLike, what: str = "output folder") -> Path:
    """``path`` as a Path once it is known to be a writable folder (or creatable); InputError if not."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(f"{what}: {path} is a file, not a folder")
    _writable_folder(path, what)
    return path


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, last: str | None = None) -> Iterator[Path]:
    """Yield a temporary folder inside ``path``; on success its files are moved into ``path``.

    Each file is renamed into place (atomic on POSIX), the file named ``last`` (whose presence
    says the set is complete) after all the others; on failure the temporary folder is removed and ``path``
    keeps what it had: never a partial output that a rerun would trust. A temporary folder of the
    same output left by a killed run (SIGKILL runs no cleanup) is removed first.
    """
    import shutil

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    prefix = f".{last or path.name}."
    for stale in path.glob(f"{glob_escape(prefix)}*.tmp"):  # left by a killed run of this same output
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=prefix, suffix=".tmp", dir=path))
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        files = sorted((p for p in tmp.rglob("*") if p.is_file()), key=lambda p: (p.name == last, str(p)))
        for src in files:
            dst = path / src.relative_to(tmp)
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.chmod(src, 0o666 & ~umask)
            os.replace(src, dst)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` if the block succeeds.

    ``suffix`` defaults to the full suffix of ``path`` (``.nii.gz`` stays ``.nii.gz``) so that
    libraries choosing the format from the file name keep working.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix is None:
        suffix = "".join(path.suffixes[-2:]) if path.name.endswith(".nii.gz") else path.suffix
    # a temporary of this same file left by a killed run (SIGKILL runs no cleanup): one writer
    # per output (Snakemake runs one job per output), so it is no one's work in progress
    for stale in path.parent.glob(f"{glob_escape('.' + path.name + '.')}*.tmp{glob_escape(suffix)}"):
        stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates 0600; give the file the mode any other new file would have.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def json_text(obj: Any, indent: int | None = 2) -> str:
    """``obj`` as JSON text (numpy scalars and arrays, paths converted), keys sorted."""
    return json.dumps(obj, indent=indent, sort_keys=True, default=_json_default)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json_text(obj) + "\n")


def write_tsv(path: str | os.PathLike, frame) -> None:
    """Write a pandas DataFrame as a tab-separated table with a header, atomically."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, sep="\t", index=False, na_rep="n/a")


#: NIfTI qform/sform codes of the spaces the pipeline writes
NIFTI_SPACE_CODES = {"scanner": 1, "mni": 4}


#: the columns every participants table has (the manifest's required columns)
PARTICIPANT_COLUMNS = ("participant_id", "dataset", "cohort", "age", "sex")


def read_participants(path: str | os.PathLike):
    """The study's participants table (results/cohort/participants.tsv, written by
    brainage.data.manifest): ids as text, ``n/a`` and empty cells as missing. The one reader of that
    table; a user's manifest is read and validated by ``brainage.data.manifest.read_manifest``."""
    import pandas as pd

    frame = pd.read_csv(path, sep="\t", na_values=["n/a", "NA", ""], dtype={"participant_id": str})
    missing = [c for c in PARTICIPANT_COLUMNS if c not in frame.columns]
    if missing:
        raise InputError(f"{path}: participants table lacks column(s) {', '.join(missing)}")
    return frame


def nifti_image(data: np.ndarray, affine: np.ndarray, space: str = "mni"):
    """A NIfTI-1 image whose qform and sform both name ``space`` (mni: MNI152, scanner: native), in mm."""
    import nibabel as nib

    code = NIFTI_SPACE_CODES[space]
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=code)
    img.set_sform(affine, code=code)
    img.header.set_xyzt_units("mm")
    return img


def save_nifti(img, path: str | os.PathLike) -> None:
    """Save a nibabel image atomically (gzip level fixed by nibabel, so output is deterministic)."""
    with atomic_path(path) as tmp:
        img.to_filename(str(tmp))


def save_figure(fig, path: str | os.PathLike, **kwargs) -> None:
    """Save a matplotlib figure atomically; PNG metadata is stripped for byte-identical reruns."""
    path = Path(path)
    kwargs.setdefault("dpi", 150)
    kwargs.setdefault("bbox_inches", "tight")
    if path.suffix == ".png":
        kwargs.setdefault("metadata", {"Software": None})
    elif path.suffix in (".svg", ".pdf"):
        kwargs.setdefault("metadata", {"Date": None} if path.suffix == ".svg" else {"CreationDate": None})
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip("."), **kwargs)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
