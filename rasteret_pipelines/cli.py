"""The ``rasteret-pipelines`` command line."""

from __future__ import annotations

import argparse
import json
import sys

from rasteret_pipelines import __version__


def _header(args: argparse.Namespace) -> int:
    from rasteret_pipelines.cog import FetchConfig, read_headers

    config = FetchConfig(requester_pays=args.requester_pays, aws_unsigned=args.unsigned)
    headers = read_headers(args.hrefs, config=config)
    for header in headers:
        if args.json:
            print(json.dumps(header.to_dict()))
            continue
        print(header.href)
        print(f"  size {header.size} bytes, etag {header.etag}, header {header.header_bytes} bytes")
        print(f"  {header.width} x {header.height} x {header.count} {header.dtype}, crs {header.crs}")
        print(f"  transform {header.transform}, nodata {header.nodata}")
        for k, level in enumerate(header.levels):
            kind = "full" if k == 0 else f"overview {k}"
            print(
                f"  {kind}: {level.width} x {level.height} in {level.tile_width} x "
                f"{level.tile_height} blocks, compression {level.compression}, "
                f"predictor {level.predictor}"
            )
    return 0


def _demo(args: argparse.Namespace) -> int:
    from rasteret_pipelines_demo.demo import run_demo, serve_for_quickstart

    months = [m.strip() for m in args.months.split(",") if m.strip()] if args.months else None
    try:
        if args.serve:
            return serve_for_quickstart(months)
        run_demo(months=months, dagster_home=args.dagster_home)
    except (RuntimeError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def _ui(args: argparse.Namespace) -> int:
    from rasteret_pipelines_demo.demo import run_ui

    return run_ui(args.dagster_home, args.dagster_args)


DEMO_HELP = "run the Dagster pipeline on the offline Sentinel-2 demo mirror (no network)"
DEMO_DESCRIPTION = (
    "Write the offline demo world (once), serve it on 127.0.0.1, register the quick start's "
    "AOIs and materialise collections, NDVI GeoTIFFs and time series through Dagster, recording "
    "the runs in DAGSTER_HOME (default ./.dagster_home) for `rasteret-pipelines ui`. "
    "RASTERET_STAC_URL / RASTERET_STORAGE (e.g. public, s3://bucket/prefix) run the same "
    "pipeline against Earth Search and S3; see docs/dagster.md for every variable."
)


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    """The demo command's arguments, on ``rasteret-pipelines demo`` and ``python -m rasteret_pipelines_demo``."""
    parser.add_argument(
        "--months", help="comma-separated YYYY-MM months (default RASTERET_DEMO_MONTHS or 2024-01..2024-03)"
    )
    parser.add_argument("--dagster-home", help="Dagster instance folder (default $DAGSTER_HOME or ./.dagster_home)")
    parser.add_argument(
        "--serve",
        action="store_true",
        help="only serve the demo mirror (no Dagster runs) until Ctrl-C, printing the environment "
        "lines that point the quick start at it",
    )
    parser.set_defaults(func=_demo)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rasteret-pipelines", description=__doc__)
    parser.add_argument("--version", action="version", version=__version__)
    sub = parser.add_subparsers(dest="command", required=True)
    header = sub.add_parser("header", help="read and print COG headers")
    header.add_argument("hrefs", nargs="+", help="http(s)://, s3:// or local paths")
    header.add_argument("--json", action="store_true", help="print CogHeader.to_dict() as JSON")
    header.add_argument("--requester-pays", action="store_true", help="s3:// requester pays")
    header.add_argument("--unsigned", action="store_true", help="anonymous s3:// reads")
    header.set_defaults(func=_header)
    demo = sub.add_parser("demo", help=DEMO_HELP, description=DEMO_DESCRIPTION)
    add_demo_arguments(demo)
    ui = sub.add_parser(
        "ui",
        add_help=False,  # -h is dg dev's --host
        help="open the Dagster UI (dg dev) on the demo, with the kept instance DAGSTER_HOME (default ./.dagster_home)",
        description=(
            "Seed DAGSTER_HOME (default ./.dagster_home) with the repository's dagster.yaml if needed "
            "and run `dg dev -w workspace.yaml` on it, from inside that folder (so Dagster does "
            "not warn about the repository's own dagster.yaml), with relative RASTERET_STORAGE, "
            "RASTERET_AOI_FILE and RASTERET_DEMO_DIR made absolute. The demo is selected "
            "(RASTERET_STAC_URL=demo unless set) and its mirror served while the UI runs; it stops "
            "with the UI. Further arguments go to dg dev (e.g. -h 0.0.0.0 -p 3001)."
        ),
    )
    ui.add_argument("--help", action="help", help="show this help message and exit")
    ui.add_argument("--dagster-home", help="Dagster instance folder (default $DAGSTER_HOME or ./.dagster_home)")
    ui.set_defaults(func=_ui)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command == "ui":
        args.dagster_args = rest
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    return run(args)


def run(args: argparse.Namespace) -> int:
    """Run a parsed command: its exit status (2 for a :class:`~rasteret_pipelines.errors.RasteretError`)."""
    from rasteret_pipelines.errors import RasteretError

    try:
        return args.func(args)
    except RasteretError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
