"""Deployment: gunicorn configs per serving mode, the project's worker class, server launchers."""
