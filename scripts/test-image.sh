#!/usr/bin/env bash
# Builds the container image (scripts/build-image.sh) and checks it: `podman image inspect`
# shows the non-root user, the entrypoint and the ports; the image holds exactly the
# binary, its libraries and the user files; and the binary runs from the image's own root
# filesystem as that user and passes `turnpike probe` on loopback. It runs with `podman run
# --network host` where this machine lets podman start containers; where it cannot (in a
# container without cgroup or rlimit rights, podman's OCI runtime fails before the image
# is looked at), the exported filesystem runs under chroot instead, and the script says so.
# CI runs it (.ci/run) as root.
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=localhost/turnpike:test-image-$$
WORK=$(mktemp -d /tmp/turnpike-test-image.XXXXXX)
HOST_TURNPIKE=${TURNPIKE:-target/debug/turnpike}
SECRET=test-image-secret
SERVER_PID=

fail() {
    echo "test-image: FAIL: $*" >&2
    exit 1
}
step() { echo "test-image: $*"; }

cleanup() {
    local status=$?
    if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    [ "$status" -ne 0 ] && [ -f "$WORK/run.err" ] && cat "$WORK/run.err" >&2
    podman rmi --force "$IMAGE" >/dev/null 2>&1 || true
    rm -rf "$WORK"
    exit "$status"
}
trap cleanup EXIT

[ "$(id -u)" -eq 0 ] || fail "needs root (chroot)"
[ -x "$HOST_TURNPIKE" ] || cargo build --locked --quiet --bin turnpike

step "building $IMAGE"
IMAGE=$IMAGE scripts/build-image.sh >/dev/null

step "podman image inspect"
inspect() { podman image inspect "$IMAGE" --format "$1"; }
[ "$(inspect '{{.Config.User}}')" = "65532:65532" ] || fail "user: $(inspect '{{.Config.User}}')"
[ "$(inspect '{{json .Config.Entrypoint}}')" = '["/usr/bin/turnpike"]' ] \
    || fail "entrypoint: $(inspect '{{json .Config.Entrypoint}}')"
[ "$(inspect '{{json .Config.Cmd}}')" = '["run","--config","/etc/turnpike/turnpike.toml"]' ] \
    || fail "cmd: $(inspect '{{json .Config.Cmd}}')"
for port in 3478/udp 3478/tcp 9478/tcp 49152-65535/udp; do
    inspect '{{json .Config.ExposedPorts}}' | grep -q "\"$port\"" || fail "port $port not exposed"
done

step "the image's files"
container=$(podman create "$IMAGE")
podman export "$container" >"$WORK/rootfs.tar"
podman rm "$container" >/dev/null
ROOT=$WORK/rootfs
mkdir "$ROOT"
tar -xf "$WORK/rootfs.tar" -C "$ROOT"
(cd "$ROOT" && find . -type f | sort) >"$WORK/files"
expected=$(printf '%s\n' ./etc/group ./etc/passwd ./usr/bin/turnpike \
    $(ldd scripts/../target/deb/turnpike | awk '/=> \// { print "." $3 } /^\t\/.*ld-linux/ { print "." $1 }') | sort)
[ "$(cat "$WORK/files")" = "$expected" ] || fail "unexpected files in the image: $(cat "$WORK/files")"
grep -q '^turnpike:x:65532:65532:' "$ROOT/etc/passwd" || fail "no user 65532 in /etc/passwd"

# Starts the server with LAUNCHER... on loopback ports the ready line names; sets UDP, API.
start_server() {
    "$@" run --listen 127.0.0.1:0 --api-listen 127.0.0.1:0 --relay-ip 127.0.0.1 \
        --allow-peer 127.0.0.1 --auth-secret "$SECRET" --workers 1 \
        >"$WORK/run.out" 2>"$WORK/run.err" </dev/null &
    SERVER_PID=$!
    for _ in $(seq 100); do
        grep -q '"event":"ready"' "$WORK/run.out" 2>/dev/null && break
        kill -0 "$SERVER_PID" 2>/dev/null || fail "the server exited before it was ready"
        sleep 0.2
    done
    ready=$(grep '"event":"ready"' "$WORK/run.out") || fail "no ready line in 20 s"
    UDP=$(sed -n 's/.*"udp":\["\([^"]*\)".*/\1/p' <<<"$ready")
    API=$(sed -n 's/.*"api":"\([^"]*\)".*/\1/p' <<<"$ready")
    SERVER_MAIN_PID=$(sed -n 's/.*"pid":\([0-9]*\).*/\1/p' <<<"$ready")
}

probe_and_stop() {
    "$HOST_TURNPIKE" probe --timeout 5 --secret "$SECRET" "turn:$UDP?transport=udp" \
        "turn:$UDP?transport=tcp" >"$WORK/probe.out" 2>&1 || { cat "$WORK/probe.out" >&2; fail "turnpike probe"; }
    "$HOST_TURNPIKE" drain --status --api "http://$API" | grep -q '^not draining: 0 allocations' \
        || fail "the API of the server in the image"
    kill "$SERVER_PID"
    wait "$SERVER_PID" || fail "the server did not exit cleanly on SIGTERM"
    SERVER_PID=
}

if out=$(timeout 60 podman run --rm --network host "$IMAGE" --version 2>&1); then
    step "podman run: $out"
    start_server podman run --rm --network host --name "turnpike-test-image-$$" "$IMAGE"
    probe_and_stop
else
    step "podman cannot start containers here (${out##*Error: }); running the image's filesystem with chroot instead"
fi

step "chroot into the image's filesystem as 65532:65532"
chroot --userspec=65532:65532 "$ROOT" /usr/bin/turnpike --version | grep -q '^turnpike ' \
    || fail "the binary does not run from the image's filesystem"
start_server chroot --userspec=65532:65532 "$ROOT" /usr/bin/turnpike
[ "$(stat -c %u "/proc/$SERVER_MAIN_PID")" = 65532 ] || fail "the server does not run as 65532"
[ "$(readlink "/proc/$SERVER_MAIN_PID/root")" = "$ROOT" ] || fail "the server is not in the image's root"
probe_and_stop
step "ok"
