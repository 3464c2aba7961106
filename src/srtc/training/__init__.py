"""Tiny Y-only x2 super-resolution models: architecture, training, ONNX export and evaluation.

Every shipped model obeys one ONNX contract (input "lr" [1,1,H,W] luma/255, output "sr"
[1,1,2H,2W]) and is listed in ``srtc/zoo/manifest.json`` so the server can pick it by name.
"""
