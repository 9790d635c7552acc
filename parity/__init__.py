"""Parity: metrics, the tolerance table, component / trajectory / end-to-end comparisons, reports.

The top layer below the command line: imports ``zoo``, ``exporters`` and ``runtimes``.
"""
