"""`python -m arena.report DIR`: rebuild DIR's tables and report from its cells."""
import sys

from .cli import main

sys.exit(main())
