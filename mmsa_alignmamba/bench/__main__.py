"""`python -m mmsa_alignmamba.bench …` = `mmsa bench …` (and ``--point SPEC``: measure one point here)."""
import sys

from .command import main

sys.exit(main())
