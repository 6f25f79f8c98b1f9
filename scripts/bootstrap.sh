#!/usr/bin/env bash
# Sourced by scripts/demo and scripts/test: makes sure the system packages, a virtual environment
# and the project installed in it are there. A second run checks and installs nothing new.
set -euo pipefail

project_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${KSH_VENV:-$project_root/.venv}"
# python3-venv, python3-dev and gcc: a fresh Debian lacks them, and pyscard builds from source.
# faketime: CI runs the date-sensitive tests again at other instants (.ci/run).
# softhsm2: the PKCS#11 token that holds master keys (a terminal's SAM, the back office's HSM).
system_packages=(python3 python3-venv python3-dev gcc pcscd vsmartcard-vpcd libpcsclite-dev swig chromium faketime softhsm2)

missing_system_packages() {
    local package
    for package in "${system_packages[@]}"; do
        dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" \
            || printf '%s ' "$package"
    done
}

missing="$(missing_system_packages)"
if [ -n "$missing" ]; then
    if [ "$(id -u)" = 0 ]; then
        apt_get=(apt-get)
    elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
        apt_get=(sudo apt-get)
    else
        echo "ksh: please install these system packages first: sudo apt-get install $missing" >&2
        exit 2
    fi
    echo "ksh: installing system packages: $missing" >&2
    DEBIAN_FRONTEND=noninteractive "${apt_get[@]}" update -qq
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive "${apt_get[@]}" install -y -qq $missing >/dev/null
fi

python="${KSH_PYTHON:-python3}"
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "ksh: Python 3.11 or newer is needed ($python is $("$python" --version 2>&1))" >&2
    exit 2
fi

if [ ! -x "$venv/bin/python" ]; then
    echo "ksh: creating virtual environment in $venv" >&2
    "$python" -m venv "$venv"
fi

# Reinstall only when the project's declared dependencies change.
stamp="$venv/.ksh-install-stamp"
wanted="$(sha256sum "$project_root/pyproject.toml" | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
    echo "ksh: installing the project and its dependencies into $venv" >&2
    install_log="$venv/ksh-install.log"
    if ! { "$venv/bin/python" -m pip install --disable-pip-version-check --upgrade pip &&
        "$venv/bin/python" -m pip install --disable-pip-version-check -e "$project_root[dev]"; } \
        >"$install_log" 2>&1; then
        tail -n 30 "$install_log" >&2
        echo "ksh: installing the project failed; the whole log is in $install_log" >&2
        exit 1
    fi
    echo "$wanted" >"$stamp"
fi

export PATH="$venv/bin:$PATH"
cd "$project_root"
