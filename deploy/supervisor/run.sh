#!/bin/sh
# Run supervisord on supervisord.conf in the foreground: `deploy/supervisor/run.sh`. Or talk to
# the running one: `deploy/supervisor/run.sh ctl status` (any supervisorctl command after ctl).
# Works from any directory, in this repo and in a generated project.
#
# supervisord gives no default to a variable its config reads: this script does, with the
# template's own values (deploy/nginx.py's ports, deploy/gunicorn/common.py's worker count and
# trusted proxy), and whatever the environment sets beats them. DJANGO_* and the rest of the
# environment reach the servers unchanged.
set -eu

here=$(CDPATH='' cd -- "$(dirname -- "$0")" && pwd)
root=$(dirname -- "$(dirname -- "$here")")

# The project's state directory (project/settings.py's default); supervisord's socket, pid file
# and every log go under it unless SUPERVISOR_RUN_DIR says otherwise.
export SUPERVISOR_RUN_DIR="${SUPERVISOR_RUN_DIR:-${DJANGO_VAR_DIR:-$root/var}/supervisor}"
export WSGI_PORT="${WSGI_PORT:-8001}"
export ASGI_PORT="${ASGI_PORT:-8002}"
export WSGI_MODE="${WSGI_MODE:-wsgi_gthread}"
export WEB_CONCURRENCY="${WEB_CONCURRENCY:-2}"
export FORWARDED_ALLOW_IPS="${FORWARDED_ALLOW_IPS:-127.0.0.1}"
# Requests before a uvicorn process is recycled (deploy/gunicorn/common.py's max_requests).
export UVICORN_MAX_REQUESTS="${UVICORN_MAX_REQUESTS:-10000}"
# deploy/gunicorn/common.py's websocket_max_message_size, for uvicorn's --ws-max-size.
export WEBSOCKET_MAX_MESSAGE_BYTES="${WEBSOCKET_MAX_MESSAGE_BYTES:-1048576}"

# Two processes at least: supervisord re-binds an interface's socket only once its last
# process is gone, and when that was a gunicorn master killed while its worker still held the
# socket, the bind fails (EADDRINUSE) and supervisord 4.2 itself exits (README.md).
case $WEB_CONCURRENCY in
    '' | *[!0-9]* | 0 | 1)
        echo "run.sh: WEB_CONCURRENCY=$WEB_CONCURRENCY: use 2 or more processes per interface." >&2
        exit 2
        ;;
esac
# Only the WSGI configs by name: a WSGI_MODE such as ../../x must not pick another file.
case $WSGI_MODE in
    wsgi_sync | wsgi_gthread) ;;
    *)
        echo "run.sh: WSGI_MODE=$WSGI_MODE is not a WSGI mode: use wsgi_sync or wsgi_gthread." >&2
        exit 2
        ;;
esac

# Debian's package installs to /usr/bin, which a service's PATH may lack.
PATH=$PATH:/usr/bin
if [ "${1:-}" = ctl ]; then
    shift
    exec supervisorctl --configuration "$here/supervisord.conf" "$@"
fi
if ! command -v supervisord >/dev/null 2>&1; then
    echo "run.sh: supervisord is not installed: \`sudo apt-get install supervisor\` (Debian/Ubuntu)." >&2
    exit 127
fi
mkdir -p "$SUPERVISOR_RUN_DIR/conf.d"
# exec: supervisord becomes this process, so the caller's SIGTERM reaches it.
exec supervisord --nodaemon --configuration "$here/supervisord.conf" "$@"
