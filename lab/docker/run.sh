#!/usr/bin/env bash
# `make docker-test`: build the images from the Dockerfile as it is, run the compose stack, check
# it from outside (lab/docker/stack_check.py), take it down.
#
# With a working engine (`docker info` succeeds) that engine is used as it is, base images and
# all. Without one (CI: Debian 12, no engine, no registry) this script brings up its own, as root:
# Docker Engine + Compose v2 from Debian trixie's packages in a debootstrapped root (Debian 12's
# docker.io is 20.10 with Compose v1, which rejects this compose file), with stand-ins for the
# base images built from Debian packages, because no registry is reachable. Everything it starts
# is stopped and everything it adds to the machine is removed, on success, failure or Ctrl-C.
#
# Environment: DUALSERVE_DOCKER_CACHE (default /var/cache/dualserve-docker) keeps the
# debootstrapped roots and the stand-in images between runs; DUALSERVE_DEBIAN_MIRROR overrides
# the Debian mirror (default: the one apt uses here).
set -euo pipefail

repo=$(cd "$(dirname -- "$0")/../.." && pwd)
here=$repo/lab/docker
python=$repo/.venv/bin/python
cache=${DUALSERVE_DOCKER_CACHE:-/var/cache/dualserve-docker}
engine_root=$cache/trixie
minbase_tar=$cache/bookworm-minbase.tar
marker=.dualserve-ready

started=$(date +%s.%N)
say() { printf 'docker-test: %s\n' "$*" >&2; }
# Seconds since `$1` (a date +%s.%N), one decimal.
since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }

if docker info >/dev/null 2>&1 && docker compose version >/dev/null 2>&1; then
    say "using this machine's engine ($(docker version --format '{{.Server.Version}}')) and its base images"
    exec "$python" "$here/stack_check.py" --docker docker
fi

if [ "$(id -u)" -ne 0 ]; then
    say "no working Docker engine here, and bringing one up needs root (debootstrap, namespaces)"
    exit 1
fi
for tool in unshare nsenter pivot_root; do
    command -v "$tool" >/dev/null || { say "needs $tool (util-linux)"; exit 1; }
done
if ! command -v debootstrap >/dev/null; then
    say "installing debootstrap"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
fi

# The Debian mirror apt uses on this machine (deb822 URIs: or one-line deb), not the security one.
mirror() {
    local found
    if [ -n "${DUALSERVE_DEBIAN_MIRROR:-}" ]; then
        echo "$DUALSERVE_DEBIAN_MIRROR"
        return
    fi
    # `|| true`: under pipefail a missing sources file would fail the pipeline.
    found=$({
        awk '/^URIs:/ { for (i = 2; i <= NF; i++) print $i }' /etc/apt/sources.list.d/*.sources
        awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /:\/\//) { print $i; break } }' \
            /etc/apt/sources.list /etc/apt/sources.list.d/*.list
    } 2>/dev/null | grep -E '/debian/?$' | head -n 1 || true)
    echo "${found:-http://deb.debian.org/debian}"
}

# Three attempts: a mirror behind a proxy sometimes drops the first requests.
bootstrap() {
    local target=$1 suite=$2 attempt
    shift 2
    for attempt in 1 2 3; do
        rm -rf "$target.partial"
        debootstrap --variant=minbase "$@" "$suite" "$target.partial" "$(mirror)" \
            >"$cache/debootstrap-$suite.log" 2>&1 && return 0
        say "debootstrap $suite failed (attempt $attempt of 3)"
        sleep $((attempt * 5))
    done
    tail -n 20 "$cache/debootstrap-$suite.log" >&2
    return 1
}

engine_root_ready() {
    [ -e "$engine_root/$marker" ] && return
    say "debootstrapping Debian trixie for Docker Engine + Compose v2 into $engine_root (once)"
    rm -rf "$engine_root"
    bootstrap "$engine_root" trixie
    chroot "$engine_root.partial" sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends docker.io docker-cli docker-compose \
        docker-buildx iptables iproute2 ca-certificates >/dev/null && apt-get clean'
    touch "$engine_root.partial/$marker"
    mv "$engine_root.partial" "$engine_root"
}
minbase_ready() {
    [ -e "$minbase_tar" ] && return
    say "debootstrapping Debian bookworm minbase for the stand-in base images (once)"
    bootstrap "$cache/bookworm" bookworm
    tar -C "$cache/bookworm.partial" --numeric-owner -cf "$minbase_tar.partial" .
    rm -rf "$cache/bookworm.partial"
    mv "$minbase_tar.partial" "$minbase_tar"
}

mkdir -p "$cache"
t=$(date +%s.%N)
# The two are independent and mostly wait on the mirror: side by side.
minbase_ready &
minbase_pid=$!
# On failure, let the other finish rather than leave it running behind us.
engine_root_ready || { wait "$minbase_pid" || true; exit 1; }
wait "$minbase_pid"
say "roots ready in $(since "$t") s"

# --- The engine ------------------------------------------------------------------------------------
# dockerd runs with the trixie root as the real root (pivot_root) of a private mount namespace:
# under a plain chroot every `docker exec`, so every health check, fails to chdir into the
# container. Every mount (the root onto itself, which `docker load` needs, proc, sys, dev,
# the repository read-only for the build context, the containers' own) lives in that namespace and
# vanishes with its last process.
workdir=$(mktemp -d)
dockerd_pid=
iptables_before=$workdir/iptables.before
ip_forward_before=$(cat /proc/sys/net/ipv4/ip_forward)

in_root() { chroot "$engine_root" "$@"; }

# Processes in the engine's mount namespace: dockerd, containerd, shims, docker-proxy.
namespace_pids() {
    local ns pid
    ns=$(readlink "/proc/$1/ns/mnt" 2>/dev/null) || return 0
    for pid in /proc/[0-9]*; do
        pid=${pid#/proc/}
        [ "$pid" != "$1" ] && [ "$(readlink "/proc/$pid/ns/mnt" 2>/dev/null)" = "$ns" ] && echo "$pid"
    done
    return 0
}

# Remove what dockerd added to the host's network: its rules and chains (iptables and
# ip6tables: any rule or chain not there before), its bridges (docker0, and br-* of any network
# a failed run left: dockerd keeps them at exit), the forwarding sysctl.
network_cleanup() {
    local family save restore
    for family in ip ip6; do
        save=${family}tables-save
        restore=${family}tables
        # Undo every rule that was not there before, then drop the DOCKER chains themselves.
        in_root "$save" 2>/dev/null | awk -v before="$iptables_before.$family" '
            BEGIN { while ((getline line < before) > 0) seen[line] = 1 }
            /^\*/ { table = substr($0, 2) }
            /^-A / && !seen[$0] { sub(/^-A /, "-D "); print table "\t" $0 }' |
            while IFS=$'\t' read -r table rule; do
                eval "in_root $restore -t $table $rule" 2>/dev/null || true
            done
        for table in filter nat; do
            in_root "$save" -t "$table" 2>/dev/null | awk '/^:DOCKER/ { print substr($1, 2) }' |
                while read -r chain; do
                    in_root "$restore" -t "$table" -F "$chain" 2>/dev/null || true
                done
            in_root "$save" -t "$table" 2>/dev/null | awk '/^:DOCKER/ { print substr($1, 2) }' |
                while read -r chain; do
                    in_root "$restore" -t "$table" -X "$chain" 2>/dev/null || true
                done
        done
        # dockerd sets FORWARD's policy to DROP; put back what was there.
        policy=$(awk '/^:FORWARD / { print $2 }' "$iptables_before.$family")
        in_root "$restore" -t filter -P FORWARD "${policy:-ACCEPT}" 2>/dev/null || true
    done
    for link in $(in_root ip -o link show type bridge | awk -F': ' '{ print $2 }'); do
        case $link in
            docker0 | br-*) grep -qx "$link" "$workdir/links.before" || in_root ip link delete "$link" ;;
        esac
    done
    echo "$ip_forward_before" >/proc/sys/net/ipv4/ip_forward
}

cleanup() {
    local status=$? pid
    trap - EXIT INT TERM
    if [ -n "$dockerd_pid" ] && kill -0 "$dockerd_pid" 2>/dev/null; then
        t=$(date +%s.%N)
        kill -TERM "$dockerd_pid" 2>/dev/null || true
        for _ in $(seq 150); do kill -0 "$dockerd_pid" 2>/dev/null || break; sleep 0.2; done
        kill -KILL "$dockerd_pid" 2>/dev/null || true
        say "engine stopped in $(since "$t") s"
    fi
    if [ -n "$dockerd_pid" ]; then
        # Whatever dockerd left in its namespace (containerd, shims) is ours: end it by PID.
        for _ in $(seq 50); do
            pids=$(namespace_pids "$dockerd_pid")
            [ -z "$pids" ] && break
            # shellcheck disable=SC2086
            kill -KILL $pids 2>/dev/null || true
            sleep 0.1
        done
        wait "$dockerd_pid" 2>/dev/null || true
    fi
    network_cleanup
    rm -rf "$engine_root/var/lib/docker" "$engine_root/var/lib/containerd" "$workdir"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

for family in ip ip6; do
    in_root "${family}tables-save" >"$iptables_before.$family" 2>/dev/null || : >"$iptables_before.$family"
done
in_root ip -o link show | awk -F': ' '{ print $2 }' | cut -d@ -f1 >"$workdir/links.before"
rm -rf "$engine_root/var/lib/docker" "$engine_root/var/lib/containerd"

t=$(date +%s.%N)
# A session of its own: Ctrl-C reaches the check, which takes the stack down while the engine
# still runs; the trap stops the engine afterwards.
# shellcheck disable=SC2016
setsid unshare --mount --propagation private sh -c '
    set -eu
    root=$1 repo=$2
    mount --bind "$root" "$root"
    mount -t proc proc "$root/proc"
    mount --rbind /sys "$root/sys"
    mount --rbind /dev "$root/dev"
    mount -t tmpfs tmpfs "$root/run"
    mount -t tmpfs -o mode=1777 tmpfs "$root/tmp"
    # After the tmpfs mounts: a clone under /tmp (or /run) needs its mount point on them.
    mkdir -p "$root$repo"
    mount --bind -o ro "$repo" "$root$repo"
    cp /etc/resolv.conf "$root/etc/resolv.conf"
    cd "$root"
    mkdir -p .old-root
    pivot_root . .old-root
    cd /
    umount -l /.old-root
    rmdir /.old-root
    exec dockerd --log-level=warn
' dockerd "$engine_root" "$repo" >"$cache/dockerd.log" 2>&1 &
dockerd_pid=$!

# The client runs in the engine's namespace too: its socket, its plugins (compose, buildx), and
# the repository at the same path for the build context.
cat >"$workdir/docker" <<WRAPPER
#!/bin/sh
exec nsenter --target $dockerd_pid --mount --root sh -c 'cd "\$0" && exec docker "\$@"' "$repo" "\$@"
WRAPPER
chmod +x "$workdir/docker"
docker=$workdir/docker

for _ in $(seq 150); do
    "$docker" info >/dev/null 2>&1 && break
    kill -0 "$dockerd_pid" 2>/dev/null || { tail -n 30 "$cache/dockerd.log" >&2; exit 1; }
    sleep 0.2
done
"$docker" info >/dev/null || { tail -n 30 "$cache/dockerd.log" >&2; exit 1; }
say "engine up in $(since "$t") s: Docker $("$docker" version --format '{{.Server.Version}}'), $("$docker" compose version --short 2>/dev/null | sed 's/^/Compose /')"

# --- Stand-in base images ----------------------------------------------------------------------------
# No registry: the names the Dockerfile and compose.yaml ask for are built here from Debian
# bookworm packages, and cached as one `docker save` tarball (the four share the minbase layer)
# keyed by their inputs.
python_image="python:$(sed -n 's/^ARG PYTHON_VERSION=//p' "$repo/Dockerfile")-slim-bookworm"
nginx_image="nginx:$(sed -n 's/^ARG NGINX_VERSION=//p' "$repo/Dockerfile")-alpine"
postgres_image=$(sed -n 's/^ *image: *\(postgres:[^ ]*\).*/\1/p' "$repo/compose.yaml" | head -n 1)
redis_image=$(sed -n 's/^ *image: *\(redis:[^ ]*\).*/\1/p' "$repo/compose.yaml" | head -n 1)
standins=(python "$python_image" nginx "$nginx_image" postgres "$postgres_image" redis "$redis_image")

t=$(date +%s.%N)
contexts=$workdir/standins
cp -r "$here/standins" "$contexts"
# Only the python stand-in talks TLS at build time (pip, uv), through this machine's CA.
cp /etc/ssl/certs/ca-certificates.crt "$contexts/python/host-ca-certificates.crt"
key=$({
    (cd "$contexts" && find . -type f -print0 | sort -z | xargs -0 sha256sum)
    echo "${standins[*]}"
    stat -c '%s %Y' "$minbase_tar"
} | sha256sum | cut -c1-16)
tarball=$cache/standins-$key.tar
if [ -e "$tarball" ]; then
    "$docker" load --quiet <"$tarball" >/dev/null
else
    "$docker" import - dualserve-ci/bookworm-minbase <"$minbase_tar" >/dev/null
    # Side by side: each mostly waits on the mirror.
    builds=()
    for ((i = 0; i < ${#standins[@]}; i += 2)); do
        tar -C "$contexts/${standins[i]}" -c . |
            "$docker" build --quiet --tag "${standins[i + 1]}" - >/dev/null &
        builds+=($!)
    done
    for pid in "${builds[@]}"; do wait "$pid"; done
    rm -f "$cache"/standins-*.tar
    "$docker" save "$python_image" "$nginx_image" "$postgres_image" "$redis_image" >"$tarball.partial"
    mv "$tarball.partial" "$tarball"
fi
for ((i = 0; i < ${#standins[@]}; i += 2)); do
    say "STAND-IN ${standins[i + 1]}: built here from Debian bookworm packages" \
        "(lab/docker/standins/${standins[i]}), not the official image"
done
say "stand-ins ready in $(since "$t") s"

"$python" "$here/stack_check.py" --docker "$docker" --engine-pid "$dockerd_pid"
say "whole run $(since "$started") s"
