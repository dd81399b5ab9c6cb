"""The Dagster code location: ``dagster dev -w workspace.yaml`` loads ``defs`` from here.

Configured from the environment (see :mod:`rasteret_pipelines.defs.settings`); with nothing set
it runs the offline demo (``rasteret-pipelines demo``).
"""

from rasteret_pipelines.defs import build_definitions

defs = build_definitions()
