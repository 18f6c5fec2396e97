"""`python -m bench [NAME...]`: run the named benchmarks, or every one in this folder."""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path


def main(names: list[str]) -> int:
    available = sorted(
        module.name
        for module in pkgutil.iter_modules([str(Path(__file__).parent)])
        if not module.name.startswith("_")
    )
    unknown = set(names) - set(available)
    if unknown:
        print(f"unknown benchmarks {sorted(unknown)}; available: {available}", file=sys.stderr)
        return 2
    for name in names or available:
        print(f"== bench.{name}", flush=True)
        importlib.import_module(f"bench.{name}").main()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
