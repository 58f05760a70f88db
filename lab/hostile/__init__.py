"""Hostile HTTP/1.1 input: a corpus of malformed requests and a raw-socket replay tool.

`python -m lab.hostile 127.0.0.1:8000` replays every case of `corpus/` against a server or
proxy and says, per case, what came back, which layer answered it (nginx, gunicorn, uvicorn,
the app) and whether that is right; `--markdown` and `--json` for reports, `--help` for the rest.
The case format is described in lab/hostile/corpus.py.
"""
