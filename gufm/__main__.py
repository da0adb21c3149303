import sys

from gufm.cli import main

sys.exit(main())
