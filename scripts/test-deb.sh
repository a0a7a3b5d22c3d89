#!/usr/bin/env bash
# Builds the .deb with `cargo deb` and puts it through its life on this machine: install,
# check files, modes, user, generated secret and enabled unit, run the installed binary
# with the installed config (as the service user, on loopback) and pass `turnpike probe`
# and `turnpike drain` against it, reinstall and upgrade (config kept, local edit included),
# remove, purge (nothing left). Needs root, dpkg and cargo-deb; CI runs it (.ci/run).
#
#   scripts/test-deb.sh               # build with cargo deb, then test
#   DEB=path/to/turnpike.deb scripts/test-deb.sh   # test a built package
#
# Refuses to run where a turnpike package or user already exists. Whatever happens, the
# package is purged at the end and the server it started is stopped.
set -euo pipefail
cd "$(dirname "$0")/.."

CONF=/etc/turnpike/turnpike.toml
WORK=$(mktemp -d /tmp/turnpike-test-deb.XXXXXX)
SERVER_PID=

fail() {
    echo "test-deb: FAIL: $*" >&2
    exit 1
}
step() { echo "test-deb: $*"; }

cleanup() {
    local status=$?
    if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    if [ "$status" -ne 0 ] && [ -f "$WORK/run.err" ]; then
        echo "---- server log ----" >&2
        cat "$WORK/run.err" >&2
    fi
    if dpkg-query -W -f='${Status}' turnpike 2>/dev/null | grep -q ' installed\| config-files'; then
        dpkg --purge turnpike >/dev/null 2>&1 || true
    fi
    rm -rf "$WORK"
    exit "$status"
}

[ "$(id -u)" -eq 0 ] || fail "needs root (dpkg -i)"
if dpkg-query -W -f='${Status}' turnpike 2>/dev/null | grep -q 'installed\|config-files'; then
    fail "a turnpike package is already on this machine; not touching it"
fi
getent passwd turnpike >/dev/null && fail "a user turnpike already exists; not touching it"
trap cleanup EXIT

# mode owner group of a path, e.g. "640 root turnpike".
stat_of() { stat -c '%a %U %G' "$1"; }
expect_stat() {
    local got
    got=$(stat_of "$1")
    [ "$got" = "$2" ] || fail "$1 is $got, expected $2"
}
# The value of the one-element TOML list `key = ["value"]` in the config.
list_value() { sed -n "s/^$1 = \[\"\(.*\)\"\]\$/\1/p" "$CONF"; }

if [ -z "${DEB:-}" ]; then
    step "building with cargo deb"
    start=$(date +%s)
    cargo deb --locked --quiet --output "$WORK/" >/dev/null
    DEB=$(ls "$WORK"/turnpike_*.deb)
    step "built $(basename "$DEB") in $(($(date +%s) - start)) s"
fi
[ -f "$DEB" ] || fail "no package at $DEB"

step "dpkg -i"
dpkg -i "$DEB" >"$WORK/dpkg.log" 2>&1 || { cat "$WORK/dpkg.log" >&2; fail "dpkg -i"; }
dpkg-query -W -f='${Status}' turnpike | grep -qx 'install ok installed' || fail "not installed"

step "files, modes, user, conffile"
expect_stat /usr/bin/turnpike "755 root root"
expect_stat /usr/lib/systemd/system/turnpike.service "644 root root"
expect_stat /usr/lib/sysusers.d/turnpike.conf "644 root root"
expect_stat /usr/share/doc/turnpike/config.example.toml "644 root root"
expect_stat /usr/share/doc/turnpike/OPERATIONS.md "644 root root"
expect_stat /etc/turnpike "750 root turnpike"
expect_stat "$CONF" "640 root turnpike"
dpkg-query -W -f='${Conffiles}' turnpike | grep -q "^ $CONF " || fail "$CONF is not a conffile"
/usr/bin/turnpike --version | grep -qx "turnpike $(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1)" \
    || fail "turnpike --version: $(/usr/bin/turnpike --version)"
uid=$(id -u turnpike)
[ "$uid" -lt 1000 ] || fail "turnpike is not a system user (uid $uid)"
[ "$(id -gn turnpike)" = turnpike ] || fail "turnpike's group is $(id -gn turnpike)"
case "$(getent passwd turnpike | cut -d: -f7)" in
*/nologin | */false) ;;
*) fail "turnpike has a login shell: $(getent passwd turnpike)" ;;
esac
if setpriv --reuid=nobody --regid=nogroup --clear-groups cat "$CONF" >/dev/null 2>&1; then
    fail "other users can read $CONF"
fi
setpriv --reuid=turnpike --regid=turnpike --init-groups cat "$CONF" >/dev/null \
    || fail "the service user cannot read $CONF"

step "generated secret and token"
SECRET=$(list_value secrets)
TOKEN=$(list_value tokens)
[[ "$SECRET" =~ ^[0-9a-f]{64}$ ]] || fail "no generated secret in $CONF: $(grep '^secrets' "$CONF")"
[[ "$TOKEN" =~ ^[0-9a-f]{64}$ ]] || fail "no generated token in $CONF"
[ "$SECRET" != "$TOKEN" ] || fail "secret and token are the same"
checked=$(/usr/bin/turnpike check-config "$CONF") || fail "check-config $CONF"
grep -q "$SECRET" <<<"$checked" && fail "check-config printed the secret"
grep -q '^secrets = \["<redacted>"\]$' <<<"$checked" || fail "check-config: $checked"

step "unit enabled, not started without systemd"
[ -L /etc/systemd/system/multi-user.target.wants/turnpike.service ] || fail "turnpike.service is not enabled"
if [ ! -d /run/systemd/system ]; then
    for exe in /proc/[0-9]*/exe; do
        if [ "$(readlink "$exe" 2>/dev/null)" = /usr/bin/turnpike ]; then
            fail "the package started turnpike although systemd is not running"
        fi
    done
fi
if command -v systemd-analyze >/dev/null; then
    systemd-analyze verify /usr/lib/systemd/system/turnpike.service >"$WORK/verify.log" 2>&1 \
        || { cat "$WORK/verify.log" >&2; fail "systemd-analyze verify"; }
    if grep -q 'turnpike.service:' "$WORK/verify.log"; then
        cat "$WORK/verify.log" >&2
        fail "systemd-analyze verify complained"
    fi
fi

step "running the installed binary as turnpike with the installed config"
# Loopback only: listen and API on free ports (port 0; the ready line names them), relay
# on 127.0.0.1 with the probe's local peer allowed.
setpriv --reuid=turnpike --regid=turnpike --init-groups \
    /usr/bin/turnpike run --config "$CONF" --listen 127.0.0.1:0 --api-listen 127.0.0.1:0 \
    --relay-ip 127.0.0.1 --allow-peer 127.0.0.1 --workers 1 \
    >"$WORK/run.out" 2>"$WORK/run.err" </dev/null &
SERVER_PID=$!
for _ in $(seq 100); do
    grep -q '"event":"ready"' "$WORK/run.out" 2>/dev/null && break
    kill -0 "$SERVER_PID" 2>/dev/null || fail "turnpike exited before it was ready"
    sleep 0.2
done
ready=$(grep '"event":"ready"' "$WORK/run.out") || fail "no ready line in 20 s"
UDP=$(sed -n 's/.*"udp":\["\([^"]*\)".*/\1/p' <<<"$ready")
API=$(sed -n 's/.*"api":"\([^"]*\)".*/\1/p' <<<"$ready")
[ -n "$UDP" ] && [ -n "$API" ] || fail "ready line: $ready"
[ "$(stat -c %U /proc/$SERVER_PID)" = turnpike ] || fail "the server does not run as turnpike"

/usr/bin/turnpike probe --timeout 5 --credentials-url "http://$API" --api-token "$TOKEN" \
    "turn:$UDP?transport=udp" "turn:$UDP?transport=tcp" >"$WORK/probe.out" 2>&1 \
    || { cat "$WORK/probe.out" >&2; fail "turnpike probe"; }
# A revocation lands in the packaged state file, writable by the service user only.
TURNPIKE_API_TOKEN=$TOKEN /usr/bin/turnpike sessions --api "http://$API" revoke deb-test --for 60 \
    >"$WORK/revoke.out" 2>&1 || { cat "$WORK/revoke.out" >&2; fail "turnpike sessions revoke"; }
grep -q '"username": "deb-test"' /var/lib/turnpike/revocations.json \
    || fail "the revocation is not in /var/lib/turnpike/revocations.json"
expect_stat /var/lib/turnpike "700 turnpike turnpike"
# The probe released its allocations, so the drain ends at once.
TURNPIKE_API_TOKEN=$TOKEN timeout 30 /usr/bin/turnpike drain --api "http://$API" --wait --interval 0.2 \
    >"$WORK/drain.out" 2>&1 || { cat "$WORK/drain.out" >&2; fail "turnpike drain --wait"; }
tail -1 "$WORK/drain.out" | grep -qx 'drained: no allocations left' || fail "drain: $(cat "$WORK/drain.out")"
kill "$SERVER_PID"
wait "$SERVER_PID" || fail "turnpike did not exit cleanly on SIGTERM"
SERVER_PID=

step "reinstall and upgrade keep the config, local edit included"
sed -i 's/^#realm = "turnpike"$/realm = "edited.example"/' "$CONF"
grep -qx 'realm = "edited.example"' "$CONF" || fail "could not edit $CONF"
before=$(sha256sum "$CONF")
dpkg -i "$DEB" >"$WORK/dpkg.log" 2>&1 || { cat "$WORK/dpkg.log" >&2; fail "reinstall"; }
[ "$(sha256sum "$CONF")" = "$before" ] || fail "reinstalling changed $CONF"
# The same package as a later version (repacked): a real upgrade, with "$2" set in postinst.
version=$(dpkg-deb -f "$DEB" Version)
dpkg-deb -R "$DEB" "$WORK/next"
sed -i "s/^Version: .*/Version: $version+test1/" "$WORK/next/DEBIAN/control"
dpkg-deb --build --root-owner-group "$WORK/next" "$WORK/next.deb" >/dev/null
dpkg -i "$WORK/next.deb" >"$WORK/dpkg.log" 2>&1 || { cat "$WORK/dpkg.log" >&2; fail "upgrade"; }
[ "$(dpkg-query -W -f='${Version}' turnpike)" = "$version+test1" ] || fail "the upgrade did not happen"
[ "$(sha256sum "$CONF")" = "$before" ] || fail "upgrading changed $CONF"
expect_stat "$CONF" "640 root turnpike"
[ "$(id -u turnpike)" = "$uid" ] || fail "the upgrade changed turnpike's uid"
/usr/bin/turnpike check-config "$CONF" | grep -qx 'realm = "edited.example"' || fail "check-config after upgrade"

step "remove keeps the config, purge removes everything"
mapfile -t files < <(dpkg-query -L turnpike | while read -r f; do [ -f "$f" ] && echo "$f"; done)
dpkg -r turnpike >"$WORK/dpkg.log" 2>&1 || { cat "$WORK/dpkg.log" >&2; fail "dpkg -r"; }
[ ! -e /usr/bin/turnpike ] || fail "dpkg -r left /usr/bin/turnpike"
[ -f "$CONF" ] || fail "dpkg -r removed the config"
dpkg -P turnpike >"$WORK/dpkg.log" 2>&1 || { cat "$WORK/dpkg.log" >&2; fail "dpkg -P"; }
for f in "${files[@]}" /etc/turnpike /var/lib/turnpike /etc/systemd/system/turnpike.service \
    /etc/systemd/system/multi-user.target.wants/turnpike.service /usr/share/doc/turnpike; do
    [ ! -e "$f" ] && [ ! -L "$f" ] || fail "purge left $f"
done
if ls /var/lib/systemd/deb-systemd-helper-enabled/ 2>/dev/null | grep -q turnpike; then
    fail "purge left deb-systemd-helper state"
fi
getent passwd turnpike >/dev/null && fail "purge left the user turnpike"
getent group turnpike >/dev/null && fail "purge left the group turnpike"
dpkg-query -W -f='${Status}' turnpike 2>/dev/null | grep -q 'installed\|config-files' \
    && fail "dpkg still knows turnpike"

step "ok"
