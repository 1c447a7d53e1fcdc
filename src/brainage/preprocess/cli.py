"""``brainage preprocess``: one raw T1w scan through either engine, every argument checked first."""

from __future__ import annotations

from pathlib import Path

from brainage.core.grids import check_grids
from brainage.core.io import InputError
from brainage.preprocess.run import preprocess_t1w
from brainage.preprocess.settings import settings_from_config


def main(argv: list[str] | None = None) -> int:
    """``brainage preprocess --t1w FILE --out-dir DIR``: preprocess one T1w scan."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="brainage preprocess", description=main.__doc__)
    parser.add_argument("--t1w", required=True, help="raw T1-weighted NIfTI")
    parser.add_argument("--out-dir", required=True, help="output folder")
    parser.add_argument("--engine", choices=["native", "minc"], default="native")
    parser.add_argument("--grids", default="1,2", help="comma-separated template grids in mm (default 1,2)")
    parser.add_argument("--participant-id", default=None, help="subject id, sub-<letters and digits> (default: from the file name)")
    parser.add_argument("--threads", type=int, default=2,
                        help="deepbet's (torch) threads; ITK runs on one, so the outputs never depend on it")
    parser.add_argument("--config", default=None, help="YAML config whose 'preprocess' section sets the chain")
    args = parser.parse_args(argv)
    try:
        sub, grids, settings = _checked_arguments(args)
        qc = preprocess_t1w(args.t1w, args.out_dir, sub, grids, engine=args.engine, settings=settings,
                            threads=args.threads)
    except InputError as err:
        print(f"brainage preprocess: {err}", file=sys.stderr)
        return 1
    print(f"{sub}: ncc={qc['ncc']:.3f} brain_volume_ml={qc['brain_volume_ml']:.0f} passed={qc['passed']} "
          f"-> {args.out_dir}")
    return 0


def _checked_arguments(args) -> tuple[str, list[float], dict | None]:
    """Participant id, grids and settings of ``brainage preprocess``, every argument checked
    before any work (InputError, one line): scan, id, grids, threads, config, output folder."""
    import yaml

    from brainage.core.io import check_output_dir
    from brainage.data.manifest import check_image, check_participant_id

    sub = check_participant_id(args.participant_id if args.participant_id is not None else _id_from_name(args.t1w))
    problem = check_image(args.t1w)
    if problem:
        raise InputError(f"{sub}: --t1w {problem}")
    grids = check_grids([g.strip() for g in args.grids.split(",") if g.strip()])
    if args.threads < 1:
        raise InputError(f"--threads {args.threads} must be at least 1")
    settings = None
    if args.config:
        path = Path(args.config)
        if not path.is_file():
            raise InputError(f"--config {path}: no such file")
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            raise InputError(f"--config {path}: not valid YAML ({str(err).splitlines()[0]})") from None
        if not isinstance(loaded, dict) or not isinstance(loaded.get("preprocess"), dict):
            raise InputError(f"--config {path}: no 'preprocess' section (see config/defaults.yaml)")
        settings = loaded["preprocess"]
        try:
            settings_from_config(settings)
        except (TypeError, ValueError) as err:
            raise InputError(f"--config {path}: {err}") from None
    check_output_dir(args.out_dir, "--out-dir")
    return sub, grids, settings


def _id_from_name(path: str) -> str:
    name = Path(path).name.split(".")[0]
    stem = name.split("_")[0] if name.startswith("sub-") else name
    return stem if stem.startswith("sub-") else f"sub-{''.join(c for c in stem if c.isalnum())}"

