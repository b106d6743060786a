"""``python -m loadtests run …`` (a Locust scenario, verified) and ``python -m loadtests capacity …`` (wrk)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = argv[0] if argv else ""
    if command == "run":
        from loadtests.run import main as run_main

        return run_main(argv[1:])
    if command == "capacity":
        from loadtests.capacity import main as capacity_main

        return capacity_main(argv[1:])
    print("usage: python -m loadtests run|capacity [options]   (--help after the command for its options)")
    return 2


if __name__ == "__main__":
    sys.exit(main())
