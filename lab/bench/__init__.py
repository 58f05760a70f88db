"""The side-by-side benchmark: `python -m lab.bench` (`make bench`), `--help` for options.

Runs every serving mode (deploy/gunicorn/, granian when installed) against the showcase
endpoints and the user's own URLs with wrk, directly and through nginx, plus long-lived SSE
clients; writes results.json, report.md and PNG charts. How it avoids fooling itself, as the
careful published benchmarks do: server and load generator pinned to different CPUs, a fresh
server per repeat, warm-up, repeats in alternating order, medians with min/max, bare apps and
lean frameworks as the ceiling, Django's handlers in-process as the floor, Little's law for
waiting scenarios, and every error flagged.

Modules: cli (the command), plan (the matrix), runner (processes and runs), contenders and
infra (servers, nginx, upstream), wrk and sse (the load), procs (/proc memory and CPU), stats,
targets and analysis (figures), report and charts (outputs), machine (facts), bare (apps
without Django), frameworks (Starlette and Sanic answering the same), floor (Django's
handlers timed without a server).
"""
