"""rasteret-pipelines: header-cached COG reads and Dagster pipelines for satellite imagery."""

__version__ = "0.1.0"
