"""One malformed COG never aborts a month: its error is recorded per asset, the rest is indexed."""

from __future__ import annotations

import struct

import pyarrow.parquet as pq

from rasteret_pipelines.collections import build as build_module
from rasteret_pipelines.collections import build_collection
from rasteret_pipelines_tests.collections.conftest import july_2025_items

JULY = ("2025-07-01", "2025-07-31")


def _build(workspace, stac):
    return build_collection(
        "sentinel-2-l2a",
        "hostile",
        workspace,
        date_range=JULY,
        bands=["B04", "B08"],
        stac_url=stac.url,
        progress=False,
    )


def _corrupt_image_width(path) -> None:
    """Give the first IFD's ImageWidth 100 SHORT values (a bare TypeError before issue 10)."""
    data = bytearray(path.read_bytes())
    assert data[:4] == b"II*\0"
    (first,) = struct.unpack("<I", data[4:8])
    (n,) = struct.unpack("<H", data[first : first + 2])
    for i in range(n):
        at = first + 2 + 12 * i
        if struct.unpack("<H", data[at : at + 2])[0] == 256:
            data[at + 2 : at + 8] = struct.pack("<HI", 3, 100)
            data[at + 8 : at + 12] = struct.pack("<I", 16)  # 200 bytes of the ghost area
    path.write_bytes(bytes(data))


def test_a_malformed_header_is_recorded_and_the_month_goes_on(tmp_path, mirror, stac_for):
    items = [mirror.publish(i) for i in july_2025_items()]
    bad = items[2]["assets"]["red"]["href"]
    _corrupt_image_width(mirror.path_of(bad))
    report = _build(tmp_path, stac_for(items))
    assert [(f.item_id, f.band) for f in report.failed] == [(items[2]["id"], "red")]
    assert "ImageWidth" in report.failed[0].error and "100 values" in report.failed[0].error
    table = pq.read_table(tmp_path / "hostile" / "month=2025-07" / "items.parquet").to_pylist()
    assert sum(r["red_header"] is not None for r in table) == 5
    assert sum(r["nir_header"] is not None for r in table) == 6


def test_an_unexpected_exception_is_recorded_not_raised(tmp_path, mirror, stac_for, monkeypatch):
    items = [mirror.publish(i) for i in july_2025_items()]
    real = build_module.fetch_header
    victim = items[0]["assets"]["nir"]["href"]

    async def flaky(fetcher, href):
        if href == victim:
            raise OverflowError("simulated bug deep in a decoder")
        return await real(fetcher, href)

    monkeypatch.setattr(build_module, "fetch_header", flaky)
    report = _build(tmp_path, stac_for(items))
    assert [(f.item_id, f.band) for f in report.failed] == [(items[0]["id"], "nir")]
    assert report.failed[0].error == "OverflowError: simulated bug deep in a decoder"
    assert report.months[0].headers_fetched == 11
