# the command line offers `extend`, which launches jobs: it lives above the run tools
from ..sweeps.cli import main

raise SystemExit(main())
