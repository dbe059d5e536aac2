"""The local SDRS server, for the tests: it lives in the product now
(``secret_detection.localsdrs``, a documented tool for demos and integration tests); this
module keeps ``tests.support.sdrs`` importable, and ``python -m tests.support.sdrs`` runnable."""

import sys

from secret_detection.localsdrs import *  # noqa: F403
from secret_detection.localsdrs import main

if __name__ == "__main__":
    sys.exit(main())
