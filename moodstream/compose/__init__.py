"""The composition layer: what wires several parts together (docs/architecture.md).

The `moodstream` command (cli), the demo, `evaluate --replay` and the local Redis process for the demo,
tests and benches. It may import every part; no part imports it.
"""
