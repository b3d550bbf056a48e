import sys

from soar.cli import main

sys.exit(main())
