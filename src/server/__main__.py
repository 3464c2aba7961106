"""``python -m server``: start the SR server (see :mod:`srtc.server.__main__`)."""

import sys

from srtc.server.__main__ import main

if __name__ == "__main__":
    sys.exit(main())
