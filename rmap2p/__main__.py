import sys

from rmap2p.cli import main

sys.exit(main())
