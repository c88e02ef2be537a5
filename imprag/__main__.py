import sys

from imprag.cli import main

sys.exit(main())
