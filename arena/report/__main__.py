"""`python -m arena.report DIR`: rebuild DIR's tables and report from its cells."""
import sys

from .tables import main

sys.exit(main())
