"""One gunicorn config file per serving mode; `common` holds what they share.

Run one from the repo root: `gunicorn -c deploy/gunicorn/<mode>.py`.
"""
