"""Real-time WebRTC receiver that super-resolves every decoded frame (360p to 720p) on the CPU.

The path of a frame, module by module: ``app`` (signaling) -> ``session`` (one peer) ->
``fanout`` (newest decoded frame only) -> ``sr_track`` (off-loop inference) -> ``engine``
(ONNX on the luma plane) -> aiortc's encoder -> back to the browser or probe.
"""
