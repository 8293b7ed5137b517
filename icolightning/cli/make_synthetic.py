"""`icolightning-make-synthetic OUT_DIR`: synthetic data in the ClimateNet layout (never real data)."""

from __future__ import annotations

import argparse
import sys

from icolightning.cli.entry import ToolParser, argparse_main
from icolightning.errors import UsageError


def build_parser() -> argparse.ArgumentParser:
    parser = ToolParser(
        prog="icolightning-make-synthetic",
        description="Write SYNTHETIC netCDF files in the exact ClimateNet layout (train/ and test/, one file "
        "per time step, 16 variables and LABELS) with cyclones and atmospheric rivers drawn by a "
        "generator. For tests and demos; the files say 'synthetic' in their attributes.",
    )
    parser.add_argument("out_dir", help="folder that receives train/ and test/")
    parser.add_argument("--train", type=int, default=48, help="number of training files (default 48)")
    parser.add_argument("--test", type=int, default=12, help="number of test files (default 12)")
    parser.add_argument("--nlat", type=int, default=768, help="latitudes, -90..90 inclusive (default 768)")
    parser.add_argument("--nlon", type=int, default=1152, help="longitudes, 0..360 exclusive (default 1152)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def run(args: argparse.Namespace) -> None:
    if args.train < 0 or args.test < 0:
        raise UsageError("--train and --test must be >= 0")
    from datamodules.climatenet.synthetic import generate_dataset, grid_coords

    try:
        grid_coords(args.nlat, args.nlon)  # the generator's own check of the grid size
    except ValueError as exc:
        raise UsageError(f"--nlat/--nlon: {exc}") from exc
    paths = generate_dataset(args.out_dir, args.train, args.test, args.nlat, args.nlon, args.seed, not args.quiet)
    print(f"wrote {len(paths)} synthetic files under {args.out_dir}")


main = argparse_main(build_parser, run)


if __name__ == "__main__":
    sys.exit(main())
