import sys

from danemilter.cli import main

sys.exit(main())
