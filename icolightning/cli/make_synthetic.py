"""`icolightning-make-synthetic OUT_DIR`: synthetic data in the ClimateNet layout (never real data)."""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
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


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.train < 0 or args.test < 0:
        parser.error("--train and --test must be >= 0")
    from datamodules.climatenet.synthetic import generate_dataset

    try:
        paths = generate_dataset(
            args.out_dir, args.train, args.test, args.nlat, args.nlon, args.seed, not args.quiet
        )
    except (ValueError, OSError) as exc:
        print(f"icolightning-make-synthetic: error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {len(paths)} synthetic files under {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
