"""torch -> ONNX export, ONNX checks, the export manifest and artifact writing.

Imports ``zoo`` only; ``runtimes`` and ``parity`` build on this layer.
"""
