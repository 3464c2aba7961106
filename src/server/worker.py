"""``python -m server.worker``: an SR worker in a Janus VideoRoom (see :mod:`srtc.server.worker`)."""

import sys

from srtc.server.worker import main

if __name__ == "__main__":
    sys.exit(main())
