"""``brainage manifest``: the command line, built from one :class:`Importer` entry per source kind."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from brainage.core.io import InputError, check_output_file
from brainage.data.manifest.adni import ADNI_PATTERN, from_adni
from brainage.data.manifest.bids import from_bids
from brainage.data.manifest.ixi import from_ixi
from brainage.data.manifest.ppmi import PPMI_PATTERN, from_ppmi
from brainage.data.manifest.sources import log
from brainage.data.manifest.table import _normalise, _problems, concat, read_manifest, summary, write_manifest


@dataclass(frozen=True)
class Importer:
    """One source kind of ``brainage manifest``: its command-line options and how to read it.

    ``table`` and ``folder`` name the two options that go together (the demographics table and
    the folder of scans; BIDS has one folder, repeatable); ``options`` are extra options
    ``(flag, default, help)``; ``read(args)`` returns ``[(label, thunk)]``, one per source given.
    Adding a source kind is one ``from_*`` function and one entry in :data:`IMPORTERS`.
    """

    name: str
    table: tuple[str, str]
    folder: tuple[str, str] | None
    options: tuple[tuple[str, str | None, str], ...]
    read: Callable[[argparse.Namespace], list[tuple[str, Callable[[], pd.DataFrame]]]]

    def given(self, args: argparse.Namespace) -> bool:
        return bool(getattr(args, _dest(self.table[0])))


def _dest(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


IMPORTERS: tuple[Importer, ...] = (
    Importer("BIDS", ("--bids", "a BIDS dataset (repeatable)"), None,
             (("--bids-session", None, "BIDS session to take (default: first)"),),
             lambda a: [(f"BIDS {root}", lambda root=root: from_bids(Path(root).resolve(), session=a.bids_session))
                        for root in a.bids]),
    Importer("IXI", ("--ixi-demographics", "IXI.xls or a CSV of it"), ("--ixi-t1", "folder of IXI*-T1.nii.gz scans"), (),
             lambda a: [("IXI", lambda: from_ixi(a.ixi_demographics, a.ixi_t1))]),
    Importer("ADNI", ("--adni", "ADNIMERGE-style table"), ("--adni-t1", "folder of ADNI T1 scans"),
             (("--adni-viscode", "m24", "ADNI visit (default: m24)"),
              ("--adni-pattern", ADNI_PATTERN, "glob of one ADNI scan under --adni-t1")),
             lambda a: [("ADNI", lambda: from_adni(a.adni, a.adni_t1, a.adni_viscode, a.adni_pattern))]),
    Importer("PPMI", ("--ppmi", "PPMI table (status, age at visit, sex, NP3TOT, NHY)"), ("--ppmi-t1", "folder of PPMI T1 scans"),
             (("--ppmi-visit", "V08", "PPMI visit (default: V08 = 48 months)"),
              ("--ppmi-pattern", PPMI_PATTERN, "glob of one PPMI scan under --ppmi-t1")),
             lambda a: [("PPMI", lambda: from_ppmi(a.ppmi, a.ppmi_t1, a.ppmi_visit, a.ppmi_pattern))]),
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="brainage manifest",
        description="Build the participants manifest (TSV) from BIDS, IXI, ADNI and PPMI sources, "
        "concatenated, and validate it; or check an existing manifest with --check.",
        epilog="Every problem is printed on stderr, one line each (row, column, what is wrong), "
        "and nothing is written unless the whole manifest is valid (exit code 1). "
        f"ADNI scans are found with --adni-pattern (default {ADNI_PATTERN!r}; placeholders "
        "{ptid}, {ptid_label}, {viscode}, {VISCODE}), PPMI scans with --ppmi-pattern (default "
        f"{PPMI_PATTERN!r}; placeholders {{patno}}, {{visit}}), globs under the T1 folder.",
    )
    src = parser.add_argument_group("sources (any number, concatenated)")
    for imp in IMPORTERS:
        flag, text = imp.table
        if imp.folder is None:  # a folder source, repeatable (BIDS)
            src.add_argument(flag, action="append", default=[], metavar="DIR", help=text)
        else:
            src.add_argument(flag, metavar="FILE", help=text)
            src.add_argument(imp.folder[0], metavar="DIR", help=imp.folder[1])
        for option, default, text in imp.options:
            src.add_argument(option, default=default, help=text)
    parser.add_argument("--out", metavar="TSV", help="manifest to write")
    parser.add_argument("--check", metavar="TSV", help="validate an existing manifest (with its files) instead")
    parser.add_argument("--no-check-files", action="store_true", help="do not open the T1w files")
    return parser


def main(argv: list[str] | None = None) -> int:
    """``brainage manifest``: exit 0 and write ``--out``, or exit 1 with one problem per line."""
    parser = _parser()
    args = parser.parse_args(argv)
    for imp in IMPORTERS:
        if imp.folder is not None and imp.given(args) != bool(getattr(args, _dest(imp.folder[0]))):
            parser.error(f"{imp.table[0]} and {imp.folder[0]} go together")
    has_source = any(imp.given(args) for imp in IMPORTERS)
    if args.check and (has_source or args.out):
        parser.error("--check validates an existing manifest; give it alone")
    if not args.check and not (has_source and args.out):
        parser.error(f"give at least one source ({', '.join(imp.table[0] for imp in IMPORTERS)}) and --out")

    if args.out:
        try:
            check_output_file(args.out, "--out")
        except InputError as err:
            return _fail([str(err)], "nothing written")
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("brainage manifest: %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        return _run(args)
    finally:
        log.removeHandler(handler)


def _run(args: argparse.Namespace) -> int:
    check_files = not args.no_check_files
    if args.check:
        try:
            frame = read_manifest(args.check, check_files=check_files)
        except InputError as err:
            return _fail(str(err).splitlines(), "the manifest is not valid")
        print(f"{args.check}: valid, {summary(frame)}")
        return 0

    jobs = [job for imp in IMPORTERS if imp.given(args) for job in imp.read(args)]
    frames, errors = [], []
    for _, job in jobs:  # every source is read, so that all their problems show at once
        try:
            frames.append(job())
        except InputError as err:
            errors += str(err).splitlines()
    if errors:
        # the sources that did import are validated too: one source's error hides no other's
        if frames:
            errors += _problems(_normalise(concat(frames).reset_index(drop=True)), check_files)
        return _fail(errors, f"nothing written to {args.out}")
    try:
        frame = write_manifest(concat(frames), args.out, check_files=check_files)
    except InputError as err:
        return _fail(str(err).splitlines(), f"nothing written to {args.out}")
    print(f"{args.out}: {summary(frame)}")
    return 0


def _fail(problems: list[str], outcome: str) -> int:
    if len(problems) == 1:  # one problem: one line
        print(f"brainage manifest: {problems[0]}; {outcome}", file=sys.stderr)
        return 1
    for line in problems:
        print(line, file=sys.stderr)
    print(f"brainage manifest: {len(problems)} problem{'s' * (len(problems) != 1)}; {outcome}", file=sys.stderr)
    return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
