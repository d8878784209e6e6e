# shellcheck shell=bash
# Sourced by scripts/test and scripts/serve (which set -euo pipefail): go to the repository root and make
# sure .venv holds Python >= 3.11 with the project installed, creating it, as root with apt-get if need be.
# Never prompts: works with CI=true and no standard input.

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$REPO_ROOT/.venv"
cd "$REPO_ROOT" || exit 1
export PIP_NO_INPUT=1 PIP_DISABLE_PIP_VERSION_CHECK=1

say() { printf 'tickroom: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }
have() { command -v "$1" >/dev/null 2>&1; }
can_apt() { [ "$(id -u)" = 0 ] && have apt-get; }

APT_UPDATED=""
apt_install() {  # apt_install PACKAGE...
    if [ -z "$APT_UPDATED" ]; then
        say "apt-get update"
        DEBIAN_FRONTEND=noninteractive apt-get update -q </dev/null >&2 || return 1
        APT_UPDATED=1
    fi
    say "apt-get install $*"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "$@" </dev/null >&2
}

python_ok() { "$1" -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1; }

find_python() {
    local candidate
    for candidate in python3.11 python3.12 python3.13 python3; do
        if have "$candidate" && python_ok "$candidate"; then
            command -v "$candidate"
            return 0
        fi
    done
    return 1
}

venv_ok() { [ -x "$VENV/bin/python" ] && python_ok "$VENV/bin/python" && "$VENV/bin/python" -m pip --version >/dev/null 2>&1; }

ensure_venv() {
    venv_ok && return 0
    if [ -e "$VENV" ]; then
        say ".venv is unusable (moved, half-made, or from another Python): recreating it"
        rm -rf "$VENV"
    fi
    local python version output
    python="$(find_python)" || die "Tickroom needs Python 3.11 or newer (python3.11, python3.12, python3.13 or python3); install one, e.g. apt-get install python3 python3-venv on Debian 12 or Ubuntu 24.04"
    version="$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
    say "creating .venv with $python (Python $version)"
    if output="$("$python" -m venv "$VENV" 2>&1)"; then
        return 0
    fi
    rm -rf "$VENV"
    if "$python" -c 'import ensurepip' >/dev/null 2>&1 && ! grep -qi ensurepip <<<"$output"; then
        die "'$python -m venv .venv' failed: $output"
    fi
    # Debian and Ubuntu ship venv's ensurepip separately, in pythonX.Y-venv (python3-venv for the default).
    if ! can_apt; then
        die "'$python -m venv' needs ensurepip: install it with 'sudo apt-get install python$version-venv' (or python3-venv), then run this again"
    fi
    apt_install "python$version-venv" || apt_install python3-venv || die "could not install python$version-venv with apt-get"
    "$python" -m venv "$VENV" || { rm -rf "$VENV"; die "'$python -m venv .venv' still fails after installing python$version-venv"; }
}

install_project() {  # install_project EXTRAS: pip install -e '.[EXTRAS]', skipped while pyproject.toml is unchanged
    local extras="$1" stamp digest
    stamp="$VENV/.tickroom-installed-${extras//,/-}"
    digest="$(sha256sum pyproject.toml | cut -d' ' -f1)"
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$digest" ]; then
        return 0
    fi
    say "installing tickroom[$extras] into .venv"
    "$VENV/bin/python" -m pip install --progress-bar off -e ".[$extras]" </dev/null >&2
    printf '%s\n' "$digest" >"$stamp"
}
