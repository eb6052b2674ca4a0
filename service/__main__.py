"""`python -m service serve|submit|...`: the service's subcommands without the `synflow` entry
point (same commands as `synflow serve` etc. once the package is installed)."""

from __future__ import annotations

import argparse
import sys

from service.cli import register
from synflow.client.cli import register as register_remote


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service")
    sub = parser.add_subparsers(dest="command", required=True)
    register(sub)
    register_remote(sub)
    args = parser.parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
