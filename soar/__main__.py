"""`python -m soar`: the command line's entry point, nothing but `soar.cli.main`.

May import: soar.cli
"""

import sys

from soar.cli import main

sys.exit(main())
