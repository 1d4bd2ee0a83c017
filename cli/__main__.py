"""`python -m seqport.cli` runs the seqport command line."""

import sys

from seqport.cli.main import main

sys.exit(main())
