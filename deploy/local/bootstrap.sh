#!/usr/bin/env bash
# Prepare a fresh machine for recstream: system packages (JDK 17, Maven, redis-server) when
# missing, uv, and the project's virtual environment from the lock file. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/../.."

log() { printf '\033[1m[bootstrap]\033[0m %s\n' "$*"; }
need_root_install() {
  # $1: command, $2..: Debian packages that provide it
  local cmd="$1"; shift
  command -v "$cmd" >/dev/null 2>&1 && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    log "installing $* (needed for '$cmd')"
    if [ -z "${_APT_UPDATED:-}" ]; then apt-get update -qq; _APT_UPDATED=1; fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
  else
    echo "error: '$cmd' is missing. Install it first (Debian/Ubuntu: sudo apt-get install $*)." >&2
    exit 1
  fi
}

need_root_install java openjdk-17-jre-headless
need_root_install mvn maven
need_root_install redis-server redis-server

PY="${RECSTREAM_PYTHON:-$(command -v python3.11 || command -v python3 || true)}"
if [ -z "$PY" ] || ! "$PY" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)'; then
  echo "error: recstream needs Python 3.11 (found: ${PY:-none}). Set RECSTREAM_PYTHON to a 3.11 interpreter." >&2
  exit 1
fi

UV_VERSION=0.13.9
UV=.cache/bootstrap/bin/uv
if [ ! -x "$UV" ]; then
  log "installing uv $UV_VERSION into .cache/bootstrap"
  "$PY" -m venv .cache/bootstrap
  .cache/bootstrap/bin/python -m pip install -q "uv==$UV_VERSION"
fi

log "syncing .venv from uv.lock"
"$UV" sync --frozen --extra test --python "$PY" -q
log "ready: $(.venv/bin/python --version), $(java -version 2>&1 | head -1), $(redis-server --version | cut -d' ' -f3)"
