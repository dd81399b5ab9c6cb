"""Long seeded fuzzing run of the COG engine: thousands of mutated COGs, every outcome counted.

```
.venv/bin/python -m benchmarks.fuzz_cog                       # 6000 mutants, seed 1
.venv/bin/python -m benchmarks.fuzz_cog --cases 20000 --seed 7 --json fuzz.json
.venv/bin/python -m benchmarks.fuzz_cog --replay 1234 --seed 7  # show one case again
```

The mutants are those of ``rasteret_pipelines_tests/cog/fuzzing.py`` (the CI test runs a few
hundred of them): byte flips, truncation, IFD entry counts/types/offsets/values, huge sizes,
IFD loops, block byte counts/offsets, IFD chains relinked in another order, and SampleFormat
with PhotometricInterpretation changed together, over seven small GDAL COGs (Deflate, LZW
planar, ZSTD float, JPEG, BigTIFF sparse, big-endian, internal mask). Each mutant is read
(header, then a window of up to three levels, twice); the reads of the mutants that stay valid
TIFFs (relinked IFDs, SampleFormat/Photometric) are also compared with rasterio's (the YCbCr
JPEG seed aside). Prints one table (cases, outcomes, error classes, seconds, slowest case, peak
RSS) and a PASS/MISS line per target: 0 untyped exceptions, 0 hangs, 0 differing reads
(repeated, or against GDAL), peak RSS under ``--rss-limit`` MB. Exits 1 on a miss.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

from benchmarks._common import peak_rss_mb, print_targets, write_json
from rasteret_pipelines_tests.cog import fuzzing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=6000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--time-limit", type=float, default=10.0, help="seconds before a case is a hang")
    parser.add_argument("--rss-limit", type=float, default=512.0, help="peak RSS target in MB")
    parser.add_argument("--json", type=Path, help="also write the report here")
    parser.add_argument("--replay", type=int, help="write case N's mutant to ./fuzz-case-N.tif and stop")
    args = parser.parse_args(argv)
    logging.getLogger("rasteret_pipelines").setLevel(logging.ERROR)  # IFD loop warnings
    logging.getLogger("rasterio").setLevel(logging.CRITICAL)  # GDAL's warnings on mutants

    with tempfile.TemporaryDirectory(prefix="fuzz-cog-") as tmp:
        seeds = fuzzing.write_seed_cogs(Path(tmp))
        if args.replay is not None:
            name, mutant, what = fuzzing.replay(seeds, args.replay, seed=args.seed)
            out = Path(f"fuzz-case-{args.replay}.tif")
            out.write_bytes(mutant)
            print(f"case {args.replay} (seed {args.seed}): {name}: {what} -> {out}")
            return 0
        step = max(args.cases // 20, 1)

        def progress(report: fuzzing.FuzzReport) -> None:
            if report.cases % step == 0:
                print(f"  {report.cases:>7} cases  {dict(report.outcomes)}", file=sys.stderr)

        report = fuzzing.run_cases(
            seeds, args.cases, Path(tmp), seed=args.seed, time_limit=args.time_limit, progress=progress
        )
    peak = peak_rss_mb()
    rows = [
        ("cases", report.cases),
        ("seed", args.seed),
        ("read (repeated reads identical)", report.outcomes["ok"]),
        ("  of them also equal to GDAL's reads", report.compared),
        ("refused with a typed error", report.outcomes["typed"]),
        *((f"  {name}", n) for name, n in sorted(report.errors.items(), key=lambda kv: -kv[1])),
        ("untyped exceptions", report.outcomes["untyped"]),
        ("reads that differ (repeated, or from GDAL)", report.outcomes["differs"]),
        ("hangs (> time limit)", report.outcomes["hang"]),
        ("seconds", f"{report.seconds:.1f}"),
        ("cases per second", f"{report.cases / max(report.seconds, 1e-9):.0f}"),
        ("slowest case (s)", f"{report.slowest:.3f}"),
        ("peak RSS (MB)", f"{peak:.0f}"),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"\n{'fuzz_cog':<{width}}  value")
    for label, value in rows:
        print(f"{label:<{width}}  {value}")
    for bug in report.bugs[:20]:
        print("\nBUG " + bug)
    targets = {
        "0 untyped exceptions": report.outcomes["untyped"] == 0,
        "0 hangs": report.outcomes["hang"] == 0,
        "0 differing reads": report.outcomes["differs"] == 0,
        f"peak RSS < {args.rss_limit:.0f} MB": peak < args.rss_limit,
    }
    print_targets(targets)
    if args.json:
        write_json(
            args.json,
            {
                "cases": report.cases,
                "seed": args.seed,
                "outcomes": dict(report.outcomes),
                "errors": dict(report.errors),
                "compared_with_gdal": report.compared,
                "bugs": report.bugs,
                "seconds": report.seconds,
                "slowest": report.slowest,
                "peak_rss_mb": peak,
            },
        )
    return 0 if all(targets.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
