"""``python -m rasteret_pipelines_demo``: the demo command, as ``rasteret-pipelines demo``.

Same arguments (``--months``, ``--dagster-home``, ``--serve``) and exit status; see
:mod:`rasteret_pipelines_demo.demo`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from rasteret_pipelines import cli


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rasteret_pipelines_demo", description=cli.DEMO_DESCRIPTION)
    cli.add_demo_arguments(parser)
    return cli.run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
