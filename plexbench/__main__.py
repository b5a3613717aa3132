import sys

from plexbench.cli import main

sys.exit(main())
