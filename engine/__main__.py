"""`python -m seqport.engine` runs the seqport command line."""

import sys

from seqport.engine.cli import main

sys.exit(main())
