"""`python -m node --config FILE`: run one node (see node/runtime.py for what it checks and how it stops)."""

import sys

from node.runtime import main

if __name__ == "__main__":
    sys.exit(main())
