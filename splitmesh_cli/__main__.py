"""`python -m splitmesh_cli`: the `splitmesh` command without the console script."""

import sys

from splitmesh_cli.main import main

sys.exit(main())
