import sys

from autokd.cli import main

sys.exit(main())
