"""Former home of AOI-file parsing, now :mod:`rasteret_pipelines.aois` (library code).

The names stay importable from here for existing code.
"""

from rasteret_pipelines.aois import (  # noqa: F401 - re-exported for existing imports
    AOI_ID,
    AoiFileError,
    AoiSet,
    load_aois,
    parse_aois,
    read_aoi_bytes,
    read_uri_bytes,
    write_aois_geojson,
)
