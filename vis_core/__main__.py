import sys

from vis_core.cli import main

sys.exit(main())
