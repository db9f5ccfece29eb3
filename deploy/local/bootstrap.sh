#!/usr/bin/env bash
# Prepare a fresh machine for recstream: system packages (JDK 17, Maven, redis-server, and on
# Debian/Ubuntu python3.11-venv) when missing, uv, and the project's virtual environment from the
# lock file. Idempotent, and about a second when nothing changed: the venv is synced only when
# uv.lock, pyproject.toml, the interpreter or uv differ from the last successful sync (stamp in
# .venv/.recstream-sync), and never recreated just because Python was named through a shim.
#
# Environment: RECSTREAM_PYTHON  the Python 3.11 to use (default: python3.11, then python3)
#              RECSTREAM_BOOTSTRAP_APT=0  never run apt-get; say what to install instead
set -euo pipefail
cd "$(dirname "$0")/../.."

log() { printf '\033[1m[bootstrap]\033[0m %s\n' "$*"; }
die() { echo "error: $*" >&2; exit 1; }
can_apt() { [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && [ "${RECSTREAM_BOOTSTRAP_APT:-1}" != 0 ]; }
apt_install() {
  log "installing $* (apt-get)"
  if [ -z "${_APT_UPDATED:-}" ]; then apt-get update -qq; _APT_UPDATED=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}
need_root_install() {
  # $1: command, $2..: Debian packages that provide it
  local cmd="$1"; shift
  command -v "$cmd" >/dev/null 2>&1 && return 0
  can_apt || die "'$cmd' is missing. Install it first (Debian/Ubuntu: sudo apt-get install $*)."
  apt_install "$@"
}

need_root_install java openjdk-17-jre-headless
need_root_install mvn maven
need_root_install redis-server redis-server

PY="${RECSTREAM_PYTHON:-$(command -v python3.11 || command -v python3 || true)}"
if [ -z "$PY" ] || ! "$PY" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)' 2>/dev/null; then
  die "recstream needs Python 3.11 (found: ${PY:-none}). Set RECSTREAM_PYTHON to a 3.11 interpreter."
fi
# The real interpreter behind a pyenv/asdf shim: uv compares a --python path with the venv's base
# interpreter, and a shim path never matched, so every `make` deleted and recreated .venv.
PY="$("$PY" -c 'import sys; print(sys.executable)')"

# Debian and Ubuntu ship venv/ensurepip for their system Python in a separate package.
ensure_venv_module() {
  "$PY" -c 'import ensurepip, venv' 2>/dev/null && return 0
  local pkg="python3.11-venv"
  can_apt || die "$PY cannot create virtual environments (no ensurepip). Debian/Ubuntu: sudo apt-get install $pkg"
  apt_install "$pkg"
}

UV_VERSION=0.13.9
UV=.cache/bootstrap/bin/uv
if [ ! -x "$UV" ] || [ "$("$UV" --version 2>/dev/null | cut -d' ' -f2)" != "$UV_VERSION" ]; then
  log "installing uv $UV_VERSION into .cache/bootstrap"
  ensure_venv_module
  rm -rf .cache/bootstrap
  if ! out="$("$PY" -m venv .cache/bootstrap 2>&1)"; then
    rm -rf .cache/bootstrap
    case "$out" in
      *ensurepip*) die "$PY cannot create virtual environments (ensurepip is not available). Debian/Ubuntu: sudo apt-get install python3.11-venv" ;;
      *) die "$PY -m venv failed: $out" ;;
    esac
  fi
  .cache/bootstrap/bin/python -m pip install -q "uv==$UV_VERSION"
fi

STAMP=.venv/.recstream-sync
want="$(cat uv.lock pyproject.toml | sha256sum | cut -d' ' -f1) extras=test bytecode=1 uv=$UV_VERSION python=$PY"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && .venv/bin/python -c 'import sys' 2>/dev/null; then
  log ".venv is up to date with uv.lock (not syncing)"
else
  log "syncing .venv from uv.lock (the first time downloads about 6 GB of wheels, torch's CUDA libraries mostly, into the uv cache)"
  # --compile-bytecode: every process imports torch, Ray and Feast, and where PYTHONDONTWRITEBYTECODE is
  # set (it is on the machines this was measured on) nothing else ever writes their .pyc files, so
  # each process compiled them from source again: 13.5 CPU s per `import torch, ray, feast, fastapi`
  # without, 7 with, for a one-time ~55 CPU s here. Ray workers, processors and tests all start such processes.
  "$UV" sync --frozen --extra test --python "$PY" -q --compile-bytecode
  printf '%s' "$want" > "$STAMP"
fi
log "ready: $(.venv/bin/python --version), $(java -version 2>&1 | head -1), redis $(redis-server --version | cut -d' ' -f3 | cut -d= -f2)"
