"""`icolightning-regrid IN.nc OUT.nc --level L`: any lat-lon netCDF file to an icosahedral one."""

from __future__ import annotations

import argparse
import sys

from datamodules.regrid import LABEL_METHODS, METHODS
from icolightning.cli.entry import ToolParser, argparse_main, checked_level
from icolightning.errors import UsageError
from icolightning.grid import MAX_LEVEL


def build_parser() -> argparse.ArgumentParser:
    parser = ToolParser(
        prog="icolightning-regrid",
        description="Regrid the lat-lon variables of a netCDF file onto icosahedral vertices (dimension "
        "'vertex', per-vertex lat/lon). Other dimensions and attributes are kept; variables stored as "
        "integers (labels, masks; also with a _FillValue) use --label-method and keep their dtype.",
    )
    parser.add_argument("input", help="lat-lon netCDF file (CF conventions)")
    parser.add_argument("output", help="icosahedral netCDF file to write")
    parser.add_argument("--level", type=int, required=True, help=f"icosahedral level, 0..{MAX_LEVEL}")
    parser.add_argument("--variables", nargs="+", help="variables to regrid (default: all with lat and lon)")
    parser.add_argument("--method", choices=METHODS, default="bilinear",
                        help="for float variables (conservative: area-weighted mean over each vertex's Voronoi cell)")
    parser.add_argument("--label-method", choices=LABEL_METHODS, default="nearest",
                        help="for integer variables (majority: the class covering most of each Voronoi cell)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    store = parser.add_argument_group("vertex store (OUTPUT ending in .zarr; INPUT may be a zarr store or a glob)")
    store.add_argument("--label-variable", default="",
                       help="integer label variable to store as labels (default: none, labels are 0)")
    store.add_argument("--scheduler", default="processes",
                       help="none | processes | local | a Dask scheduler address (tcp://host:8786)")
    store.add_argument("--workers", type=int, default=1, help="processes or LocalCluster workers")
    return parser


def run(args: argparse.Namespace) -> None:
    level = checked_level(args.level)
    if args.output.rstrip("/").endswith(".zarr"):
        _to_store(args, level)
        return
    from datamodules.io.convert import regrid_netcdf

    out = regrid_netcdf(args.input, args.output, level, args.variables, args.method,
                        not args.quiet, args.label_method)
    print(f"wrote {out}")


main = argparse_main(build_parser, run)


def _to_store(args: argparse.Namespace, level: int) -> None:
    """OUTPUT.zarr: the vertex store the training cache is made of (same format, same engine)."""
    from datamodules.cache.engine import Scheduler
    from datamodules.cache.entries import PreprocessConfig, write_vertex_store

    if not args.variables:
        raise UsageError("a .zarr vertex store needs --variables (its channels, in order)")
    config = PreprocessConfig(level, tuple(args.variables), args.method, args.label_variable,
                              label_method=args.label_method)
    scheduler = Scheduler.from_config(args.scheduler, args.workers)
    store = write_vertex_store(args.input, args.output, config, scheduler, not args.quiet)
    print(f"wrote {store.path}")


if __name__ == "__main__":
    sys.exit(main())
