"""`python -m bench [--quick] [NAME...]`: run the named benchmarks, or every one in this
folder; then print one table of every headline figure against its target and write it as
JSON under bench/results/. A benchmark that fails is named, the others still run, and the
exit status says so."""

from __future__ import annotations

import importlib
import os
import pkgutil
import sys
import traceback
from pathlib import Path


def available() -> list[str]:
    return sorted(
        module.name
        for module in pkgutil.iter_modules([str(Path(__file__).parent)])
        if not module.name.startswith("_")
    )


def main(arguments: list[str]) -> int:
    if "--quick" in arguments:
        os.environ["BENCH_QUICK"] = "1"
    names = [name for name in arguments if name != "--quick"]
    unknown = set(names) - set(available())
    if unknown:
        print(f"unknown benchmarks {sorted(unknown)}; available: {available()}", file=sys.stderr)
        return 2
    from bench._report import FIGURES, quick, table, write

    failed = []
    for name in names or available():
        print(f"== bench.{name}{' (quick)' if quick() else ''}", flush=True)
        try:
            importlib.import_module(f"bench.{name}").main()
        except (Exception, SystemExit):  # reported; the run fails at the end
            traceback.print_exc()
            failed.append(name)
            print(f"bench.{name} FAILED", flush=True)
    print("\n== summary" + (" (quick mode: sizes too small to mean anything)" if quick() else ""))
    print(table(FIGURES))
    if failed:
        print(f"failed: {', '.join(failed)}")
    print(f"written to {write(FIGURES, failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
