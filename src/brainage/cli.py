"""``brainage`` command line: one subcommand per stage, each owned by its library module.

Every module listed in ``SUBCOMMANDS`` exposes ``main(argv: list[str] | None) -> int`` with its
own argparse parser; the module is imported only when its subcommand runs, so that
``brainage --version`` or ``brainage manifest`` do not pay for importing torch.
"""

from __future__ import annotations

import importlib
import sys

from brainage import __version__

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "manifest": ("brainage.data.manifest", "build and validate a participants manifest (BIDS, IXI, ADNI, PPMI)"),
    "resources": ("brainage.data.atlases", "write the packaged template, brain mask and AAL116 on template grids"),
    "simulate": ("brainage.data.simulate", "simulate a raw T1w cohort with known ground truth (BIDS)"),
    "preprocess": ("brainage.preprocess", "preprocess one T1w scan: brain mask, N4, affine to MNI152"),
    "predict": ("brainage.apply.batch", "predict the brain age of new raw T1w scans (one, a folder, a manifest) with trained models"),
}


def _usage() -> str:
    lines = [f"usage: brainage [--version] <command> [<args>]", "", "commands:"]
    lines += [f"  {name:<12}{help_}" for name, (_, help_) in SUBCOMMANDS.items()]
    lines += ["", "Run 'brainage <command> --help' for the options of one command."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    if argv[0] == "--version":
        print(f"brainage {__version__}")
        return 0
    command, rest = argv[0], argv[1:]
    if command not in SUBCOMMANDS:
        print(f"brainage: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(SUBCOMMANDS[command][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
