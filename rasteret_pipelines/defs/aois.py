"""The AOI file's names for the Dagster layer: :mod:`rasteret_pipelines.aois` re-exported.

Parsing and checking live in the library (:mod:`rasteret_pipelines.aois`); this module only
makes the same objects importable as ``rasteret_pipelines.defs.aois``.
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
