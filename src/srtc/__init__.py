"""SRTC: a WebRTC receiver that super-resolves every decoded frame (360p to 720p) on the CPU.

- :mod:`srtc.server`: what ``python -m server`` runs (signaling, receive path, SR track, return path, page).
- :mod:`srtc.zoo`: the shipped generators and their manifest.
- :mod:`srtc.runtime`: the ONNX contract, shared by the server, the evaluator and the benchmarks.
- :mod:`srtc.tools`: the probe and the benchmarks; they use the runtime, never the reverse.
- :mod:`srtc.training`: architectures, data, training, export, quantisation, evaluation (needs the ``train`` extra).
"""
