#!/usr/bin/env bash
# Debian packages `make test` and `make bench` need beside Python's: espeak-ng (the speech
# tests and benchmarks synthesise their audio with it) and tcmalloc (workers run on it where it
# is installed: workers/native_env.py; tests/test_native_env.py checks that they do; the
# benchmarks measure on the worker's allocator). Where one is missing and
# apt-get exists, it installs it (with sudo when not root). Elsewhere it says what to install;
# the tests that need it then fail (they never skip).
set -uo pipefail
missing=()
command -v espeak-ng >/dev/null 2>&1 || missing+=(espeak-ng)
# found the way the worker finds it (workers/native_env.py)
python3 -c 'import ctypes.util, sys; sys.exit(not ctypes.util.find_library("tcmalloc_minimal"))' \
  || missing+=(libtcmalloc-minimal4)
[ ${#missing[@]} -eq 0 ] && exit 0
if command -v apt-get >/dev/null 2>&1; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi
  { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null; } && exit 0
fi
echo "error: ${missing[*]} missing and could not be installed; install them (Debian/Ubuntu:" \
  "apt-get install ${missing[*]}; macOS: brew install espeak-ng): the tests and benchmarks" \
  "need them" >&2
exit 0
