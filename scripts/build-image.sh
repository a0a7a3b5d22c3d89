#!/usr/bin/env bash
# Builds the container image from Containerfile with no base image: the release binary
# (the .deb's `deb` profile) and the shared libraries `ldd` names, copied from this host
# into a root filesystem, plus /etc/passwd and /etc/group for the image's user.
#
#   scripts/build-image.sh            # -> localhost/turnpike:<version>; prints the name
#   IMAGE=turnpike:test scripts/build-image.sh
#
# Needs buildah (or podman) and ldd. The context is target/image/ (rebuilt each time).
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1)
IMAGE=${IMAGE:-localhost/turnpike:$VERSION}
CONTEXT=target/image

cargo build --locked --quiet --profile deb --bin turnpike
BIN=target/deb/turnpike

rm -rf "$CONTEXT"
ROOT=$CONTEXT/rootfs
install -D -m 0755 "$BIN" "$ROOT/usr/bin/turnpike"
# Every library the binary loads, at the path the loader looks for it.
for lib in $(ldd "$BIN" | awk '/=> \// { print $3 } /^\t\/.*ld-linux/ { print $1 }'); do
    install -D -m 0755 "$(readlink -f "$lib")" "$ROOT$lib"
done
install -d -m 0755 "$ROOT/etc/turnpike"
printf 'root:x:0:0:root:/:/sbin/nologin\nturnpike:x:65532:65532:turnpike:/:/sbin/nologin\n' >"$ROOT/etc/passwd"
printf 'root:x:0:\nturnpike:x:65532:\n' >"$ROOT/etc/group"
cp Containerfile "$CONTEXT/"

if command -v buildah >/dev/null; then
    buildah bud --quiet --layers=false -f "$CONTEXT/Containerfile" -t "$IMAGE" \
        --label "org.opencontainers.image.version=$VERSION" \
        --label "org.opencontainers.image.title=turnpike" "$CONTEXT" >/dev/null
else
    podman build --quiet -f "$CONTEXT/Containerfile" -t "$IMAGE" \
        --label "org.opencontainers.image.version=$VERSION" \
        --label "org.opencontainers.image.title=turnpike" "$CONTEXT" >/dev/null
fi
echo "$IMAGE"
