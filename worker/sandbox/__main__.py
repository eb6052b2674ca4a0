"""`python -m worker.sandbox`: print the layers a job would get on this host, as JSON.

Starts a trivial sandboxed interpreter with the default policy and reports what its setup
applied: use it to check a deployment (e.g. that the container's seccomp profile lets the
namespaces through) before trusting it with uploads.
"""

from __future__ import annotations

import json
import sys
import tempfile

from . import SandboxPolicy, start


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="sandbox-probe-") as scratch:
        proc = start([sys.executable, "-S", "-c", "pass"], SandboxPolicy(scratch=scratch))
        proc.wait(60)
        report = {
            "layers": proc.layers,
            "exit": proc.describe_exit(),
            "setup_seconds": proc.setup_seconds,
        }
    print(json.dumps(report, indent=2))
    return 0 if proc.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
