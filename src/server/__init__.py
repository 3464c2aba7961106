"""The commands users know: ``python -m server`` (the SR server), ``python -m server.probe`` (its probe) and
``python -m server.worker`` (an SR worker in a Janus room).

The code lives in :mod:`srtc`; this package only keeps those commands.
"""
