"""Participant ids: how each source spells a participant and the manifest id
(``sub-<label>``) it becomes, and the check of an id before a file name is built from it."""

from __future__ import annotations

import re

from brainage.core.io import InputError
from brainage.data.manifest.cells import _text

_PARTICIPANT_ID = re.compile(r"sub-[A-Za-z0-9]+")


def _label(text: str) -> str:
    """A BIDS label: only letters and digits (``002_S_0295`` -> ``002S0295``)."""
    return re.sub(r"[^A-Za-z0-9]", "", text)


# How each source spells a participant, and the manifest label it becomes (sub-<label>).
_ID_FORMS: dict[str, tuple[re.Pattern, object, str]] = {
    "IXI": (re.compile(r"(?:IXI)?(\d{1,3})", re.I), lambda m: f"IXI{int(m.group(1)):03d}", "12, 012 or IXI012"),
    "ADNI": (re.compile(r"(\d{3})_S_(\d{4})", re.I), lambda m: f"ADNI{m.group(1)}S{m.group(2)}",
             "a PTID such as 002_S_0295"),
    "PPMI": (re.compile(r"(?:PPMI)?(\d{1,7})", re.I), lambda m: f"PPMI{int(m.group(1))}", "a PATNO such as 3001"),
    "BIDS": (re.compile(r"(?:sub-)?([A-Za-z0-9]+)"), lambda m: m.group(1), "sub-<letters and digits>"),
}


def parse_participant_id(value: object, source: str) -> str:
    """The manifest ``participant_id`` of one id cell of ``source`` (IXI, ADNI, PPMI, BIDS).

    The one id parser of every importer. A whole number saved by a spreadsheet as ``12.0``
    (or read as the float 12.0) is the id 12: IXI ``12``, ``012``, ``"IXI012"`` and ``12.0``
    all give ``sub-IXI012``. Anything else (``12.5``, ``IXI12a``, an empty cell) raises
    :class:`InputError` with the reason and the accepted forms, for the caller to name the row.
    """
    pattern, label, forms = _ID_FORMS[source]
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = _text(value)
    if text is None:
        raise InputError(f"missing {source} id (expected {forms})")
    whole = re.fullmatch(r"(\d+)\.0*", text)  # 12.0: a number column saved by a spreadsheet
    if whole and source in ("IXI", "PPMI"):
        text = whole.group(1)
    match = pattern.fullmatch(text)
    if match is None:
        raise InputError(f"{text!r} is not a {source} id (expected {forms})")
    return f"sub-{label(match)}"


def check_participant_id(value: str) -> str:
    """``value`` if it is a BIDS participant id (``sub-`` + letters and digits); InputError if not.

    Every file name is built from it: ``../../x`` or ``sub-a/b`` would write outside the
    output folder, ``sub-01_ses-1`` would break the BIDS entities.
    """
    if not isinstance(value, str) or not _PARTICIPANT_ID.fullmatch(value):
        raise InputError(f"participant id {value!r} is not 'sub-' followed by letters and digits (BIDS label)")
    return value
