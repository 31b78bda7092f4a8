"""Render hosts behind a broker (workers.backend: celery), one module per side of the boundary:
wire (what both sides agree on), executor and publish (the master's side), host and sight (the
render host's side), main (`thumbwatch worker`'s process). A render host imports nothing of the
master's modules; Celery and redis-py are imported only here, and only when configured."""
