"""``python -m server.probe``: the headless measuring client (see :mod:`srtc.tools.probe_cli`)."""

import sys

from srtc.tools.probe_cli import main

if __name__ == "__main__":
    sys.exit(main())
