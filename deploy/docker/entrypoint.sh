#!/bin/sh
# The app container's entry point: check SERVE_MODE, migrate when DJANGO_MIGRATE says so, then
# become gunicorn with deploy/gunicorn/$SERVE_MODE.py. Any arguments run instead of gunicorn
# (`docker run IMAGE python manage.py migrate`). Works outside Docker too, from any directory.
set -eu

# `exec`, never a child: gunicorn's master must BE this process (PID 1 in a container), or
# docker stop's SIGTERM reaches a shell that ignores it and gunicorn dies by SIGKILL.

cd "$(dirname -- "$0")/../.."

if [ "$#" -gt 0 ]; then
    exec "$@"
fi

modes() {
    list=
    for config in deploy/gunicorn/*.py; do
        name=$(basename "$config" .py)
        case $name in
            common | __init__) ;;
            *) list="$list${list:+, }$name" ;;
        esac
    done
    echo "$list"
}

mode=${SERVE_MODE:-wsgi_gthread}
config=deploy/gunicorn/$mode.py
# Only plain names: a SERVE_MODE such as ../../x must not pick a file outside deploy/gunicorn.
case $mode in
    "" | common | __init__ | *[!a-z0-9_]*) config= ;;
esac
if [ -z "$config" ] || [ ! -f "$config" ]; then
    echo "entrypoint: SERVE_MODE='$mode' is not a serving mode; use one of: $(modes)" >&2
    exit 64
fi

case ${DJANGO_MIGRATE:-false} in
    1 | true | yes | on) python manage.py migrate --noinput ;;
    0 | false | no | off | "") ;;
    *)
        echo "entrypoint: DJANGO_MIGRATE='$DJANGO_MIGRATE' is not a boolean: use true or false" >&2
        exit 64
        ;;
esac

exec gunicorn --config "$config"
