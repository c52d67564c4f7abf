"""``python -m peers <library> <phase> [options]``: one library's harness.

The module is imported by its own name (``peers.<library>``), so the names a
library gives its tasks (often their module's) are the ones its worker finds.
"""

import importlib
import sys

from peers.common import main

library = sys.argv.pop(1)
harness = importlib.import_module(f"peers.{library}")
main(harness.Harness, harness.worker)
