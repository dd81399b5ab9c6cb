"""Demo and test infrastructure, kept out of the library's import path.

* :mod:`~rasteret_pipelines_demo.range_server`: a range-capable HTTP file server (a local
  stand-in for S3 / a CDN) with injected latency and faults,
* :mod:`~rasteret_pipelines_demo.stac_server`: a local STAC API over in-memory items,
* :mod:`~rasteret_pipelines_demo.demo_data` and :mod:`~rasteret_pipelines_demo.demo_mirror`:
  the offline Sentinel-2 demo world and the mirror that serves it,
* :mod:`~rasteret_pipelines_demo.demo`: the demo command (``rasteret-pipelines demo``, also
  ``python -m rasteret_pipelines_demo``), which drives the Dagster pipeline.

The library (:mod:`rasteret_pipelines`) never imports this package; the tests, the
benchmarks and the Dagster layer's "demo" STAC setting do.
"""

from rasteret_pipelines_demo.range_server import FAULT_KINDS, FaultPlan, RangeServer, RequestRecord

__all__ = ["FAULT_KINDS", "FaultPlan", "RangeServer", "RequestRecord"]
