"""Seeded mutation fuzzing of the COG engine (header parsing, planning, decoding).

A few small COGs are written with GDAL (Deflate, LZW, ZSTD, JPEG, BigTIFF, big-endian, an
internal mask; all with overviews) and mutated deterministically from a seed: byte flips,
truncation, IFD entry counts, types, offsets and values, huge sizes, IFD loops, block byte
counts, IFD chains relinked in another order, SampleFormat and PhotometricInterpretation
changed together. Each mutant is read (header, then a window of every level, twice) and classified:

* ``ok`` - read, and the repeated reads are identical;
* ``typed`` - refused with a :class:`~rasteret_pipelines.errors.RasteretError`;
* ``untyped`` - any other exception (a bug);
* ``differs`` - two reads of the same window differ, or (for the mutants that keep a valid
  TIFF: IFDs relinked in another order, SampleFormat and PhotometricInterpretation changed
  together) a read differs from rasterio's of the same level and window (a bug);
* ``hang`` - a case ran longer than the time limit (a bug).

Used by ``test_fuzz.py`` (a few hundred cases in CI) and ``benchmarks/fuzz_cog.py``
(thousands, with peak RSS).
"""

from __future__ import annotations

import asyncio
import random
import signal
import struct
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rasteret_pipelines.cog import FetchConfig, RangeFetcher
from rasteret_pipelines.cog.read import fetch_header, fetch_windows
from rasteret_pipelines.errors import RasteretError
from rasteret_pipelines_tests.cog_factory import write_cog

SEED_COGS: dict[str, dict] = {
    "deflate": {"compress": "DEFLATE", "predictor": 2, "nodata": 0},
    "lzw-int16-planar": {"compress": "LZW", "dtype": "int16", "count": 2, "interleave": "band"},
    "zstd-float32": {"compress": "ZSTD", "dtype": "float32", "predictor": 3, "nodata": float("nan")},
    "jpeg-rgb": {"compress": "JPEG", "dtype": "uint8", "count": 3},
    "bigtiff": {"compress": "DEFLATE", "bigtiff": True, "sparse": True},
    "big-endian": {"compress": "LZW", "endian": "big", "predictor": 2},
    "mask": {"compress": "DEFLATE", "dtype": "uint8", "count": 3, "mask": True},
}
"""Name -> :func:`~rasteret_pipelines_tests.cog_factory.write_cog` options of the seed files."""

SEED_SIZE = {"width": 300, "height": 260, "blocksize": 128}

WINDOW_BYTES = 16 << 20
"""Largest window read per level: a mutant claiming 4096 float64 bands reads a small window."""


def write_seed_cogs(directory: Path, names: list[str] | None = None) -> dict[str, bytes]:
    """Write the seed COGs into ``directory``; return name -> file bytes."""
    out = {}
    for name in names or list(SEED_COGS):
        path = write_cog(directory / f"seed-{name}.tif", **SEED_SIZE, **SEED_COGS[name])
        out[name] = path.read_bytes()
    return out


# -- TIFF structure (for targeted mutations) --------------------------------------------------


@dataclass
class Layout:
    """Where the IFDs, entries and next-IFD pointers of a (valid) TIFF are."""

    byte_order: str
    big: bool
    first_pointer: int
    entries: list[int] = field(default_factory=list)  # file offset of every IFD entry
    next_pointers: list[int] = field(default_factory=list)
    ifds: list[int] = field(default_factory=list)


def layout(data: bytes) -> Layout:
    bo = "<" if data[:2] == b"II" else ">"
    big = struct.unpack(bo + "H", data[2:4])[0] == 43
    first_pointer = 8 if big else 4
    lay = Layout(bo, big, first_pointer)
    offset = struct.unpack(bo + ("Q" if big else "I"), data[first_pointer : first_pointer + (8 if big else 4)])[0]
    while offset and offset not in lay.ifds and len(lay.ifds) < 64:
        lay.ifds.append(offset)
        count_size, entry_size, ptr = (8, 20, 8) if big else (2, 12, 4)
        (n,) = struct.unpack(bo + ("Q" if big else "H"), data[offset : offset + count_size])
        if n > 4096 or offset + count_size + n * entry_size + ptr > len(data):
            break  # already mutated beyond repair: mutate what was found so far
        base = offset + count_size
        lay.entries += [base + i * entry_size for i in range(n)]
        pointer = base + n * entry_size
        lay.next_pointers.append(pointer)
        (offset,) = struct.unpack(bo + ("Q" if big else "I"), data[pointer : pointer + ptr])
    return lay


INTERESTING = [0, 1, 2, 3, 7, 8, 255, 256, 4095, 65535, 65536, 2**31 - 1, 2**31, 2**32 - 1]


def _put(data: bytearray, at: int, fmt: str, value: int) -> None:
    size = struct.calcsize(fmt)
    if 0 <= at and at + size <= len(data):
        data[at : at + size] = struct.pack(fmt, value & ((1 << (8 * size)) - 1))


def _entry_fields(lay: Layout) -> tuple[int, str, int, str, int]:
    """(type at, type fmt, count at, count fmt, value at) offsets inside one entry."""
    if lay.big:
        return 2, "H", 4, "Q", 12
    return 2, "H", 4, "I", 8


def mutate(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """One seeded mutant of ``data`` and a short description of what was done."""
    out = bytearray(data)
    lay = layout(data)
    bo = lay.byte_order
    type_at, type_fmt, count_at, count_fmt, value_at = _entry_fields(lay)
    value_fmt = "Q" if lay.big else "I"
    header_end = min(max(lay.entries[-1] + 20 if lay.entries else 64, 512), len(out))
    if len(out) < 32:
        return bytes(out), "too short to mutate"
    kind = rng.choice(
        [
            "flip-header",
            "flip-header",
            "flip-any",
            "truncate",
            "count",
            "type",
            "value",
            "value",
            "huge-size",
            "loop",
            "block-count",
            "block-offset",
            "two",
            "reorder-ifds",
            "format-photometric",
        ]
    )
    if kind == "two":
        first, what1 = mutate(data, rng)
        second, what2 = mutate(first, rng) if layout_ok(first) else (first, "")
        return second, f"{what1} + {what2}"
    if kind.startswith("flip"):
        span = header_end if kind == "flip-header" else len(out)
        positions = [rng.randrange(span) for _ in range(rng.randint(1, 8))]
        for p in positions:
            out[p] ^= 1 << rng.randrange(8)
        return bytes(out), f"{kind} at {positions}"
    if kind == "truncate":
        cut = rng.choice([rng.randrange(16, max(header_end, 17)), rng.randrange(len(out))])
        return bytes(out[:cut]), f"truncate at {cut}"
    if not lay.entries:
        return bytes(out), "no entries"
    if kind == "reorder-ifds":
        return _reorder_ifds(out, lay, rng)
    if kind == "format-photometric":
        return _format_photometric(out, lay, rng)
    entry = rng.choice(lay.entries)
    (tag,) = struct.unpack(bo + "H", data[entry : entry + 2])
    if kind == "count":
        value = rng.choice(INTERESTING + [rng.randrange(2**32)])
        _put(out, entry + count_at, bo + count_fmt, value)
        return bytes(out), f"tag {tag} count = {value}"
    if kind == "type":
        value = rng.randrange(0, 20)
        _put(out, entry + type_at, bo + type_fmt, value)
        return bytes(out), f"tag {tag} type = {value}"
    if kind == "value":
        value = rng.choice(INTERESTING + [rng.randrange(len(data) + 100), rng.randrange(2**32)])
        _put(out, entry + value_at, bo + value_fmt, value)
        return bytes(out), f"tag {tag} value/offset = {value}"
    if kind == "huge-size":
        size_tags = {256, 257, 258, 277, 278, 322, 323, 339, 284}
        candidates = [e for e in lay.entries if struct.unpack(bo + "H", data[e : e + 2])[0] in size_tags]
        entry = rng.choice(candidates or lay.entries)
        (tag,) = struct.unpack(bo + "H", data[entry : entry + 2])
        value = rng.choice([0, 65535, 1 << 20, 2**31 - 1, 2**32 - 1, 16384, 3, 13])
        (ftype,) = struct.unpack(bo + "H", data[entry + type_at : entry + type_at + 2])
        fmt = {3: "H", 4: "I", 16: "Q"}.get(ftype, "H")
        _put(out, entry + value_at, bo + fmt, value)
        return bytes(out), f"tag {tag} value = {value}"
    if kind == "loop":
        pointer = rng.choice(lay.next_pointers + [lay.first_pointer])
        target = rng.choice(lay.ifds)
        _put(out, pointer, bo + value_fmt, target)
        return bytes(out), f"IFD pointer at {pointer} -> {target}"
    # block-count / block-offset: one entry of TileByteCounts or TileOffsets
    want = 325 if kind == "block-count" else 324
    arrays = [e for e in lay.entries if struct.unpack(bo + "H", data[e : e + 2])[0] in (want, want - 46)]
    if not arrays:
        return bytes(out), "no block arrays"
    entry = rng.choice(arrays)
    (ftype,) = struct.unpack(bo + "H", data[entry + type_at : entry + type_at + 2])
    (count,) = struct.unpack(bo + count_fmt, data[entry + count_at : entry + count_at + struct.calcsize(count_fmt)])
    width = {3: 2, 4: 4, 16: 8}.get(ftype, 4)
    fmt = {2: "H", 4: "I", 8: "Q"}[width]
    inline = (8 if lay.big else 4) >= count * width
    (ptr,) = struct.unpack(bo + value_fmt, data[entry + value_at : entry + value_at + (8 if lay.big else 4)])
    base = entry + value_at if inline else ptr
    index = rng.randrange(max(count, 1))
    value = rng.choice(INTERESTING + [rng.randrange(len(data) * 2)])
    _put(out, base + index * width, bo + fmt, value)
    return bytes(out), f"{kind} {index} = {value}"


STRUCTURAL = ("reorder-ifds", "format-photometric")
"""Mutations that keep a valid TIFF: their reads are also compared with rasterio's."""
NO_GDAL_ORACLE = frozenset({"jpeg-rgb"})
"""Seeds whose pixels GDAL decodes differently by design (YCbCr JPEG: libjpeg 9's chroma)."""

SAMPLE_FORMAT_TAG, PHOTOMETRIC_TAG = 339, 262
PHOTOMETRICS = [0, 1, 2, 3, 4, 5, 6, 8, 9, 10, 32844]


def _reorder_ifds(out: bytearray, lay: Layout, rng: random.Random) -> tuple[bytes, str]:
    """Relink the IFD chain in another order (the first image may become an overview)."""
    if len(lay.ifds) < 2 or len(lay.next_pointers) < len(lay.ifds):
        return bytes(out), "reorder-ifds: one IFD"
    order = list(range(len(lay.ifds)))
    if rng.random() < 0.7:
        rest = order[1:]
        rng.shuffle(rest)
        order = [0] + rest  # overviews (and masks) out of size order
    else:
        rng.shuffle(order)
    fmt = lay.byte_order + ("Q" if lay.big else "I")
    _put(out, lay.first_pointer, fmt, lay.ifds[order[0]])
    for this, nxt in zip(order, order[1:] + [None]):
        _put(out, lay.next_pointers[this], fmt, 0 if nxt is None else lay.ifds[nxt])
    return bytes(out), f"reorder-ifds {order}"


def _ifd_entries(data: bytes, lay: Layout, ifd: int) -> list[int]:
    """Offsets of the entries of the IFD at offset ``ifd``."""
    count_size, entry_size = (8, 20) if lay.big else (2, 12)
    raw = data[ifd : ifd + count_size]
    if len(raw) < count_size:
        return []
    (n,) = struct.unpack(lay.byte_order + ("Q" if lay.big else "H"), raw)
    if n > 4096 or ifd + count_size + n * entry_size > len(data):
        return []  # an IFD an earlier mutation broke: nothing to change
    return [ifd + count_size + i * entry_size for i in range(n)]


def _set_short_values(out: bytearray, lay: Layout, entry: int, value: int) -> None:
    """Every value of a SHORT entry (inline or out of line) set to ``value``."""
    bo = lay.byte_order
    type_at, _, count_at, count_fmt, value_at = _entry_fields(lay)
    (ftype,) = struct.unpack(bo + "H", out[entry + type_at : entry + type_at + 2])
    (count,) = struct.unpack(bo + count_fmt, out[entry + count_at : entry + count_at + struct.calcsize(count_fmt)])
    if ftype != 3 or count > 64:
        return  # SampleFormat and Photometric hold one value per sample at most
    inline = (8 if lay.big else 4) >= 2 * count
    if inline:
        base = entry + value_at
    else:
        width = 8 if lay.big else 4
        (base,) = struct.unpack(bo + ("Q" if lay.big else "I"), out[entry + value_at : entry + value_at + width])
    for i in range(count):
        _put(out, base + 2 * i, bo + "H", value)


def _format_photometric(out: bytearray, lay: Layout, rng: random.Random) -> tuple[bytes, str]:
    """SampleFormat and PhotometricInterpretation changed together, in one IFD or in all."""
    fmt = rng.choice([1, 2, 3])
    photometric = rng.choice(PHOTOMETRICS)
    targets = lay.ifds if rng.random() < 0.7 else [rng.choice(lay.ifds)]
    data = bytes(out)
    for ifd in targets:
        for entry in _ifd_entries(data, lay, ifd):
            (tag,) = struct.unpack(lay.byte_order + "H", data[entry : entry + 2])
            if tag == SAMPLE_FORMAT_TAG:
                _set_short_values(out, lay, entry, fmt)
            elif tag == PHOTOMETRIC_TAG:
                _set_short_values(out, lay, entry, photometric)
    where = "all IFDs" if targets is lay.ifds else f"IFD at {targets[0]}"
    return bytes(out), f"format-photometric SampleFormat={fmt} Photometric={photometric} in {where}"


def layout_ok(data: bytes) -> bool:
    try:
        layout(data)
        return len(data) >= 16
    except (struct.error, IndexError, ValueError):
        return False


# -- memory ------------------------------------------------------------------------------------


def status_mb(name: str) -> float:
    """``VmRSS``, ``VmHWM`` (peak RSS) ... of this process from /proc, in MB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(name + ":"):
                return int(line.split()[1]) / 1024
    raise KeyError(name)


def reset_peak_rss() -> bool:
    """Reset the kernel's RSS high-water mark (``VmHWM``) to the current RSS; False if denied."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


# -- running mutants ---------------------------------------------------------------------------


class _Hang(Exception):
    pass


@dataclass
class FuzzReport:
    cases: int = 0
    outcomes: Counter = field(default_factory=Counter)
    errors: Counter = field(default_factory=Counter)
    bugs: list[str] = field(default_factory=list)
    slowest: float = 0.0
    """Wall time of the slowest case (benchmarks print it; tests bound requests, not time)."""
    seconds: float = 0.0
    most_requests: int = 0
    """Ranges requested by the case that requested the most (header and window reads)."""
    compared: int = 0
    """Mutants read (outcome ``ok``) whose every window also equalled rasterio's."""


def _window_for(header, level) -> tuple[int, int, int, int]:
    per_pixel = header.count * np.dtype(header.dtype).itemsize
    side = int(max(1, min(256, (WINDOW_BYTES // max(per_pixel, 1)) ** 0.5)))
    return (0, 0, min(level.width, side), min(level.height, side))


async def _read_all(fetcher: RangeFetcher, href: str, oracle: bool = False) -> list[np.ndarray]:
    header = await fetch_header(fetcher, href)
    results = []
    for k, level in enumerate(header.levels[:3]):
        window = _window_for(header, level)
        first = (await fetch_windows(fetcher, [(header, window)], k))[0]
        second = (await fetch_windows(fetcher, [(header, window)], k))[0]
        if not np.array_equal(first, second, equal_nan=first.dtype.kind == "f"):
            raise AssertionError(f"two reads of level {k} window {window} differ")
        results.append(first)
        if oracle:
            differs = _differs_from_gdal(href, header, k, window, first)
            if differs:
                raise AssertionError(f"level {k} window {window} differs from GDAL: {differs}")
    return results


def _differs_from_gdal(href: str, header, k: int, window, ours: np.ndarray) -> str | None:
    """How the engine's read differs from rasterio's of the same level and window, or None.

    GDAL numbers overviews in file order (:meth:`CogHeader.gdal_overview_order`). A file GDAL
    cannot open or read is not compared (the engine may read what GDAL refuses).
    """
    import warnings

    import rasterio
    from rasterio.windows import Window

    kwargs = {"overview_level": header.gdal_overview_order().index(k)} if k else {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with rasterio.open(href, **kwargs) as src:
                if (src.width, src.height) != (header.levels[k].width, header.levels[k].height):
                    return f"GDAL's level is {src.width}x{src.height}"
                expected = src.read(window=Window(*window))
    except Exception:  # noqa: BLE001 - GDAL refuses the file: nothing to compare
        return None
    if expected.dtype == np.float32 and ours.dtype == np.float16:
        ours = ours.astype(np.float32)  # GDAL < 3.11 exposes half floats as float32
    if expected.shape != ours.shape or expected.dtype != ours.dtype:
        return f"GDAL gives {expected.dtype} {expected.shape}, the engine {ours.dtype} {ours.shape}"
    if not np.array_equal(expected, ours, equal_nan=ours.dtype.kind == "f"):
        return f"pixels differ by up to {np.abs(expected.astype(float) - ours).max()}"
    return None


def run_cases(
    seeds: dict[str, bytes],
    count: int,
    workdir: Path,
    *,
    seed: int = 0,
    time_limit: float = 10.0,
    progress: Callable[[FuzzReport], None] | None = None,
) -> FuzzReport:
    """Read ``count`` mutants (spread over the seed files) and classify every outcome."""
    report = FuzzReport()
    names = sorted(seeds)
    rng = random.Random(seed)
    path = workdir / "mutant.tif"
    config = FetchConfig(max_retries=0, decode_threads=2)
    started = time.perf_counter()

    def on_alarm(signum, frame):
        raise _Hang

    previous = signal.signal(signal.SIGALRM, on_alarm)

    async def main() -> None:
        async with RangeFetcher(config) as fetcher:
            for i in range(count):
                name = names[i % len(names)]
                mutant, what = mutate(seeds[name], rng)
                path.write_bytes(mutant)
                # Structure-keeping mutants are valid TIFFs: their reads must equal GDAL's (the
                # YCbCr JPEG seed aside: libjpeg 9 upsamples chroma its own way).
                oracle = what.split(" ")[0] in STRUCTURAL and " + " not in what and name not in NO_GDAL_ORACLE
                t0 = time.perf_counter()
                requests_before = fetcher.stats.requests
                signal.setitimer(signal.ITIMER_REAL, time_limit)
                try:
                    await _read_all(fetcher, str(path), oracle)
                    outcome = "ok"
                    report.compared += oracle
                except RasteretError as exc:
                    outcome = "typed"
                    report.errors[type(exc).__name__] += 1
                except _Hang:
                    outcome = "hang"
                    report.bugs.append(f"#{i} [{name}] {what}: no answer after {time_limit} s")
                except AssertionError as exc:
                    outcome = "differs"
                    report.bugs.append(f"#{i} [{name}] {what}: {exc}")
                except Exception as exc:  # noqa: BLE001 - what the fuzzer looks for
                    outcome = "untyped"
                    tb = traceback.format_exception(type(exc), exc, exc.__traceback__)[-3:]
                    report.bugs.append(f"#{i} [{name}] {what}: {type(exc).__name__}: {exc}\n{''.join(tb)}")
                finally:
                    signal.setitimer(signal.ITIMER_REAL, 0)
                report.slowest = max(report.slowest, time.perf_counter() - t0)
                report.most_requests = max(report.most_requests, fetcher.stats.requests - requests_before)
                report.cases += 1
                report.outcomes[outcome] += 1
                if progress is not None:
                    progress(report)

    try:
        asyncio.run(main())
    finally:
        signal.signal(signal.SIGALRM, previous)
    report.seconds = time.perf_counter() - started
    return report


def replay(seeds: dict[str, bytes], index: int, seed: int = 0) -> tuple[str, bytes, str]:
    """Case ``index`` of :func:`run_cases` with ``seed``: (seed file name, mutant, description)."""
    names = sorted(seeds)
    rng = random.Random(seed)
    for i in range(index + 1):
        name = names[i % len(names)]
        mutant, what = mutate(seeds[name], rng)
    return name, mutant, what
