"""Backends behind one interface (torch, onnxruntime, tensorrt) and the samplers that drive them.

Imports ``zoo`` and ``exporters``; ``parity`` builds on this layer.
"""
