import sys

from ksh.cli import main

sys.exit(main())
