"""The Dagster code location: ``dg dev`` (pyproject.toml's ``[tool.dg]``) and ``dagster dev -w
workspace.yaml`` load ``defs`` from here.

Configured from the environment (see :mod:`rasteret_pipelines.defs.settings`); with nothing set
each source's public STAC API is searched. ``rasteret-pipelines demo`` and ``rasteret-pipelines
ui`` select the offline demo explicitly.
"""

from rasteret_pipelines.defs import build_definitions

defs = build_definitions()
