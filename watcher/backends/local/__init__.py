"""The local executor: a fixed pool of worker processes on this machine (pool.py, the master's
side), the worker process itself (worker.py) and what the two say on their pipes (messages.py)."""
