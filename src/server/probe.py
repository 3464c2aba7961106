"""``python -m server.probe``: the headless measuring client (see :mod:`srtc.tools.probe`)."""

import sys

from srtc.tools.probe import main

if __name__ == "__main__":
    sys.exit(main())
