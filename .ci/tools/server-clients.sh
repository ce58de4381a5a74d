#!/usr/bin/env bash
# Installs the clients the server tests drive and nobody here wrote: the `openai` Python
# package and websocket-client (which speaks the DevTools protocol to Chromium) into .venv, and
# Debian's Chromium. Exits 0 only when all are in place; the caller then makes the tests
# require them (a missing one fails instead of printing SKIP).
set -euo pipefail
cd "$(dirname "$0")/../.."

PINNED=(openai==2.54.0 websocket-client==1.9.2)
VENV=.venv

[[ -x $VENV/bin/python ]] || python3 -m venv "$VENV" >&2
if ! "$VENV/bin/python" -c 'import openai, websocket' 2>/dev/null; then
  echo "server-clients: installing ${PINNED[*]}" >&2
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${PINNED[@]}" >&2
fi

if ! command -v chromium >/dev/null; then
  if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null; then
    echo "server-clients: no chromium and no root apt-get to install it" >&2
    exit 1
  fi
  echo "server-clients: installing chromium (Debian)" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q chromium >&2 || { apt-get update -q >&2 && apt-get install -y -q chromium >&2; }
fi
echo "server-clients: $("$VENV/bin/python" -c 'import openai; print("openai", openai.__version__)'), $(chromium --version)" >&2
