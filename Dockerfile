# Two images from one build; deploy/docker/README.md explains the design.
#   docker build -t dualserve .                        the app: any serving mode (SERVE_MODE)
#   docker build --target nginx -t dualserve-nginx .   nginx with the static files and its config

ARG PYTHON_VERSION=3.11
ARG NGINX_VERSION=1.28

# --- build: locked dependencies, static files, the Docker nginx config ---------------------------
FROM python:${PYTHON_VERSION}-slim-bookworm AS build

# uv from PyPI rather than from the ghcr.io uv image: the build needs Docker Hub and PyPI only.
ARG UV_VERSION=0.13.9
RUN pip install --no-cache-dir "uv==${UV_VERSION}"

# Compile bytecode now: the running container has a read-only filesystem and could not.
# Copy (not hardlink) out of the cache mount, and never download a Python: use the image's.
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/app/.venv

WORKDIR /app

# The dependency layer changes only with the lock file, not with every code change.
COPY pyproject.toml uv.lock ./
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --locked --no-default-groups --no-install-project

COPY manage.py ./
COPY project project
COPY apps apps
COPY deploy deploy
COPY nginx nginx

# collectstatic writes hashed names, their .gz variants and the manifest to STATIC_ROOT, outside
# /app/var (a volume would keep the first image's files forever); settings create DJANGO_VAR_DIR
# on import, so point it at a throwaway directory. It runs with production settings, as the
# image does: an app a project installs for development only (gated on DEBUG, as
# django-debug-toolbar's docs say) is not in this venv (--no-default-groups) and must not be
# imported. The secret key only lets production settings load: random, in that one command's
# environment, never in a layer. nginx's config is rendered for the same STATIC_ROOT; its server_name list
# (the allowed hosts) is fixed here, at build time, from NGINX_SERVER_NAMES, and so are the
# path prefixes the hybrid entry sends to ASGI, from NGINX_ASGI_PREFIXES (empty: the default).
ARG NGINX_SERVER_NAMES=""
ARG NGINX_ASGI_PREFIXES=""
ENV DJANGO_STATIC_ROOT=/app/static
RUN DJANGO_ENV=production DJANGO_DEBUG=false DJANGO_ALLOWED_HOSTS=build.invalid \
        DJANGO_SECRET_KEY="$(.venv/bin/python -c 'import secrets; print(secrets.token_urlsafe(50))')" \
        DJANGO_VAR_DIR=/tmp/build-var .venv/bin/python manage.py collectstatic --noinput --verbosity 0 \
    && .venv/bin/python -m deploy.nginx --target docker --out /app/nginx.conf \
    && .venv/bin/python -m compileall -q project apps deploy

# --- nginx: the proxy, with the static files baked in ---------------------------------------------
# The static files travel in this image rather than on a volume shared with the app: nothing to
# populate at start, no stale files after an upgrade, and both images come from one build.
FROM nginx:${NGINX_VERSION}-alpine AS nginx

COPY --from=build /app/static /app/static
COPY --from=build /app/nginx.conf /etc/nginx/nginx.conf

# Non-root, by number (the image's nginx user) so Kubernetes' runAsNonRoot can verify it: every
# port is above 1024, and compose mounts tmpfs where nginx writes (pid file, temp files).
USER 101:101
EXPOSE 8000 8080 8081
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["wget", "-q", "-O", "/dev/null", "http://127.0.0.1:8080/healthz"]
# Not the image's docker-entrypoint.sh: it edits /etc/nginx at start, which a read-only
# filesystem refuses. nginx itself is PID 1 and gets docker stop's signal (the base image's
# STOPSIGNAL, SIGQUIT: a graceful stop). `-e stderr`: never open the compiled-in error log.
ENTRYPOINT ["nginx", "-e", "stderr"]
CMD ["-g", "daemon off;"]

# --- app: one image for every serving mode (the default target) -----------------------------------
FROM python:${PYTHON_VERSION}-slim-bookworm AS app

# A fixed UID, so volumes and Kubernetes' runAsUser can name it.
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin app

WORKDIR /app

COPY --from=build /app/.venv .venv
COPY --from=build /app/static static
COPY --from=build /app/manage.py /app/pyproject.toml ./
COPY --from=build /app/project project
COPY --from=build /app/apps apps
COPY --from=build /app/deploy deploy

# The database directory: a fresh named volume mounted here inherits this owner. VOLUME makes
# it writable under `docker run --read-only` with nothing mounted (an anonymous volume, gone with
# --rm); compose and Kubernetes mount their own volume here.
RUN mkdir var && chown app:app var
VOLUME /app/var

# BIND on all interfaces: the container's network namespace is the boundary, and nginx and the
# published port reach the server through it. HOME and TMPDIR point at the /tmp tmpfs.
ENV PATH=/app/.venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    DJANGO_VAR_DIR=/app/var \
    DJANGO_STATIC_ROOT=/app/static \
    SERVE_MODE=wsgi_gthread \
    BIND=0.0.0.0:8000

USER 10001:10001
EXPOSE 8000
# Liveness (/healthz) here, since an orchestrator may restart an unhealthy container and a
# database outage is no reason to; compose waits on readiness (/readyz) instead.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "/app/deploy/docker/healthcheck.py", "/healthz"]
# Exec form, and the script ends in `exec gunicorn`: gunicorn's master is PID 1 and receives
# docker stop's SIGTERM (graceful shutdown) directly.
ENTRYPOINT ["/app/deploy/docker/entrypoint.sh"]
