"""The configaformer-search command line."""

import sys


def main() -> int:
    print("configaformer-search: not built yet", file=sys.stderr)
    return 2
