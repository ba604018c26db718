"""Celery app, thin tasks and beat schedule. No SQL and no SMTP here: tasks call ``digest``."""
