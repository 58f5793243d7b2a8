"""Benchmarks behind ``pyvirtio bench``: each measures pyvirtio, and where one exists, a real peer
in the same run, and reports both with their ratio."""
