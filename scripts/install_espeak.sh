#!/usr/bin/env bash
# The speech tests synthesise their audio with espeak-ng (a Debian package). `make test` runs
# this first: where espeak-ng is missing and apt-get exists, it installs it (with sudo when not
# root). Elsewhere it says what to install; the speech tests then fail (they never skip).
set -uo pipefail
command -v espeak-ng >/dev/null 2>&1 && exit 0
if command -v apt-get >/dev/null 2>&1; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi
  { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq espeak-ng >/dev/null; } && exit 0
fi
echo "error: espeak-ng is missing and could not be installed; install it (Debian/Ubuntu:" \
  "apt-get install espeak-ng, macOS: brew install espeak-ng): the speech tests need it" >&2
exit 0
