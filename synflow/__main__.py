import sys

from synflow.cli import main

sys.exit(main())
