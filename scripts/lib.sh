# Sourced by scripts/setup, demo and test: what the three share. Not a command of its own.
# Needs ROOT (the checkout) set by the caller.

# as_root WHY "$@": run the calling script as root, through sudo for a user who has it (sudo
# resets PATH, so nothing after this may depend on the caller's), else stop and say why.
as_root() {
  local why=$1
  shift
  [ "$(id -u)" -eq 0 ] && return 0
  if command -v sudo >/dev/null 2>&1; then
    exec sudo -- "$0" "$@"
  fi
  printf '%s: error: must run as root (%s), and sudo is not installed: log in as root and run it again\n' \
    "$(basename "$0")" "$why" >&2
  exit 1
}

# The Python overlaynet is (to be) installed in, on stdout: ./.venv when scripts/setup made
# one, else python3 when it can take the install as it is (>= 3.11, has pip, not marked
# externally managed as Debian's is: PEP 668; a pyenv or source-built Python). Fails when
# neither: scripts/setup then makes ./.venv.
installed_python() {
  if [ -x "$ROOT/.venv/bin/python" ]; then
    echo "$ROOT/.venv/bin/python"
    return 0
  fi
  command -v python3 >/dev/null 2>&1 || return 1
  if ! python3 - <<'PY' 2>/dev/null; then return 1; fi
import os, sys, sysconfig, importlib.util
ok = sys.version_info >= (3, 11) and importlib.util.find_spec("pip") is not None
managed = os.path.exists(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")) and sys.prefix == sys.base_prefix
sys.exit(0 if ok and not managed else 1)
PY
  python3 -c 'import sys; print(sys.executable)'
}
