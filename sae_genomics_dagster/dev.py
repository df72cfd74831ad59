"""The `dagster` command without the notice that `dg dev` supersedes `dagster dev` (dg wants a dg project
layout this package does not use); `sae-genomics ui` starts the webserver and daemon through it."""

import sys
import warnings

import dagster as dg


def main() -> None:
    from dagster._cli import main as dagster_main

    warnings.filterwarnings("ignore", category=dg.SupersessionWarning)
    sys.argv[0] = "dagster"
    sys.exit(dagster_main())


if __name__ == "__main__":
    main()
