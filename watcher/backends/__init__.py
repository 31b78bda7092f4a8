"""Executors: the two sides of the seam in executor.py. local/ runs worker processes on this
machine; celery/ sends photos to render hosts through a broker. Each package holds both ends of
its own process boundary, and neither imports the master's modules above the seam."""
