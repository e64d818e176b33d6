# Sourced by scripts/test, scripts/demo and scripts/bench: installs what is missing
# (Debian packages for FUSE, a venv with fsbackup and its test dependencies) and
# activates the venv. Safe to source again: every step checks before it installs.
set -euo pipefail
FSB_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
FSB_VENV=${FSB_VENV:-$FSB_ROOT/.venv}

fsb_apt_install() {  # fsb_apt_install PKG... : installs the Debian packages not yet installed
    local missing=()
    for p in "$@"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p"); done
    [ ${#missing[@]} -eq 0 ] && return 0
    local sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
    echo "installing Debian packages: ${missing[*]}" >&2
    $sudo apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >&2
}

# gcc, libc6-dev and python3-dev: pyfuse3 is built from source when the venv is made.
fsb_apt_install fuse3 libfuse3-dev pkg-config gcc libc6-dev python3-dev attr python3-venv zsh fish btrfs-progs

# openssh-server: the sftp:// tests and benchmark run sshd of their own on a free loopback port.
# Installing it must not start the system's sshd on port 22: Debian's scripts ask policy-rc.d,
# which forbids it (exit 101) for the length of the install unless the machine has its own.
if ! dpkg-query -W -f='${Status}' openssh-server 2>/dev/null | grep -q "ok installed"; then
    fsb_sudo=""; [ "$(id -u)" -ne 0 ] && fsb_sudo="sudo"
    fsb_policy=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' | $fsb_sudo tee /usr/sbin/policy-rc.d >/dev/null
        $fsb_sudo chmod 755 /usr/sbin/policy-rc.d
        fsb_policy=/usr/sbin/policy-rc.d
    fi
    fsb_status=0
    fsb_apt_install openssh-server || fsb_status=$?
    if [ -n "$fsb_policy" ]; then $fsb_sudo rm -f "$fsb_policy"; fi
    [ "$fsb_status" -eq 0 ]
fi

stamp="$FSB_VENV/.fsbackup-installed"
if [ ! -x "$FSB_VENV/bin/python" ]; then
    python3 -m venv "$FSB_VENV"
fi
if [ ! -f "$stamp" ] || [ "$FSB_ROOT/pyproject.toml" -nt "$stamp" ]; then
    "$FSB_VENV/bin/pip" install -q --disable-pip-version-check -e "$FSB_ROOT[test]" >&2
    touch "$stamp"
fi
# An editable install leaves the package uncompiled, and PYTHONDONTWRITEBYTECODE (set on some
# machines) would make every run compile it again: compile it here (up-to-date files are skipped).
"$FSB_VENV/bin/python" -m compileall -q "$FSB_ROOT/fsbackup" >/dev/null
export PATH="$FSB_VENV/bin:$PATH"
