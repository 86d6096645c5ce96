#!/usr/bin/env bash
# One set-up for a fresh Debian machine: the system packages the tests start or drive, then the Python environment.
#
#   ./setup.sh && . .venv/bin/activate
#
# System packages (Debian's, as root): Chromium and a CJK font (the studio's browser tests), kubectl (the manifests
# are rendered offline with `kubectl kustomize`), redis-server (book jobs). Without root the script names what is
# missing in one line and goes on with the Python environment; the tests that need a missing one then fail.
set -euo pipefail
cd "$(dirname "$0")"

missing=()
command -v chromium >/dev/null || [ -x /usr/bin/chromium ] || missing+=(chromium)
fc-list 2>/dev/null | grep -qi "wenquanyi zen hei" || missing+=(fonts-wqy-zenhei)
command -v kubectl >/dev/null || missing+=(kubernetes-client)
command -v redis-server >/dev/null || missing+=(redis-server)
command -v jq >/dev/null || missing+=(jq)  # the README's book example, run by tests/test_books.py

if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" fontconfig >/dev/null
  else
    echo "setup.sh: not root; install these Debian packages, then run it again: sudo apt-get install ${missing[*]}" >&2
  fi
fi

python3 -m venv .venv
. .venv/bin/activate
pip install -q -r requirements.txt
