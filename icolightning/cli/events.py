"""`icolightning-events INPUT... --output DIR [--truth TRUTH...]`: event catalogue, tracks,
frequency maps, histograms and (with --truth) event-level detection scores.

Inputs are label files (lat-lon or icosahedral netCDF, see `icolightning.events.files`), folders of
them or glob patterns, taken in name order as one time series; tracks continue across files.
"""

from __future__ import annotations

import argparse
import glob
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from icolightning.classes import CLASSES
from icolightning.cli.entry import ToolParser, argparse_main, checked_level
from icolightning.errors import DataFileError, UsageError


def build_parser() -> argparse.ArgumentParser:
    parser = ToolParser(
        prog="icolightning-events",
        description="Find tropical cyclones (class 1) and atmospheric rivers (class 2) in label files as "
        "connected regions on the icosahedral vertices, track them through time and write events.csv, "
        "tracks.csv, frequency.nc and PNG figures. Lat-lon labels are regridded to --level by area-weighted "
        "majority first; icosahedral files (dimension 'vertex') are used as they are.",
    )
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="netCDF files, folders of them, or glob patterns")
    parser.add_argument("--output", required=True, help="folder for the results")
    parser.add_argument("--truth", nargs="+", metavar="TRUTH",
                        help="true label files, paired with INPUT in order (same steps): adds detection scores")
    parser.add_argument("--level", type=int, default=5, help="icosahedral level for lat-lon inputs (default 5)")
    parser.add_argument("--variable", default="LABELS", help="label variable (default LABELS)")
    parser.add_argument("--truth-variable", default="LABELS", help="label variable of the truth files")
    parser.add_argument("--max-gap-hours", type=float, default=None, metavar="H",
                        help="steps further apart than H hours start new tracks (default: 1.5 times the inputs' "
                        "median time step, at most 24; inf: link across any gap)")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG figures")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def expand(patterns: Sequence[str], option: str) -> list[Path]:
    """Files named by paths, folders (their *.nc/*.nc4) and glob patterns, in that order."""
    from datamodules.io.netcdf import list_netcdf

    files: list[Path] = []
    for pattern in patterns:
        path = Path(pattern)
        if path.is_dir():
            found = list_netcdf(path)
        elif glob.has_magic(pattern):
            found = sorted(Path(p) for p in glob.glob(pattern) if Path(p).is_file())
        else:
            found = [path] if path.is_file() else []
        if not found:
            raise DataFileError(pattern, f"no such file, or no netCDF files there (named by {option})")
        files.extend(found)
    return files


def run(args: argparse.Namespace) -> None:
    level = checked_level(args.level)
    inputs = expand(args.inputs, "INPUT")
    truth = expand(args.truth, "--truth") if args.truth else None
    if truth is not None and len(truth) != len(inputs):
        raise UsageError(f"--truth names {len(truth)} files but INPUT {len(inputs)}; they are paired in order")

    if args.max_gap_hours is not None and not args.max_gap_hours > 0:
        raise UsageError(f"--max-gap-hours must be positive, got {args.max_gap_hours}")
    from icolightning.jobs.events import EventRun

    catalogue = EventRun(level, {c.id: c.short for c in CLASSES if c.id > 0}, progress=not args.quiet,
                         max_gap_hours=args.max_gap_hours)
    summary = catalogue.process(inputs, args.variable, truth, args.truth_variable)
    written = catalogue.write(Path(args.output), plots=not args.no_plots)
    print(json.dumps(summary, indent=1, default=lambda v: None if np.isnan(v) else float(v)))
    print("wrote " + ", ".join(str(p) for p in written))


main = argparse_main(build_parser, run)


if __name__ == "__main__":
    sys.exit(main())
