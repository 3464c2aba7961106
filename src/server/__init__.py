"""The commands users know: ``python -m server`` (the SR server) and ``python -m server.probe`` (its probe).

The code lives in :mod:`srtc`; this package only keeps those two commands.
"""
