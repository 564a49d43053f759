#!/bin/sh
# The Debian packages the tests need (redis-server: a real Redis for the shared-state tests;
# chromium: a real headless browser for the status page),
# installed only when missing. To add one, add its package name to PACKAGES; a package whose
# program has another name gets a "package:program" entry.
# Uses sudo only when not root; runs apt-get update once, and only if something is missing.
set -eu

PACKAGES="redis-server chromium"

missing=""
for entry in $PACKAGES; do
    package=${entry%%:*}
    program=${entry#*:}
    if ! command -v "$program" >/dev/null 2>&1 && ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "ok installed"; then
        missing="$missing $package"
    fi
done
[ -z "$missing" ] && exit 0

if [ "$(id -u)" -eq 0 ]; then
    as_root=""
elif command -v sudo >/dev/null 2>&1; then
    as_root="sudo"
else
    echo "system-deps: need root (or sudo) to install:$missing" >&2
    exit 1
fi
echo "system-deps: installing$missing" >&2
$as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
# shellcheck disable=SC2086  # $missing is a list of words
$as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
