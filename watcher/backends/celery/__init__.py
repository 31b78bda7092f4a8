"""The Celery executor: photos sent to render hosts through a broker."""
