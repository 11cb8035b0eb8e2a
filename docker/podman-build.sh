#!/bin/bash
# `podman build` on a host without a Docker engine (`make base-image`, `make image`):
#
# - RUN steps use the host's network (--network host): podman never sets up its bridge;
# - no registry is ever asked (--pull=never): every FROM must be in local storage;
# - pip inside the build uses the host's package index settings and CA bundle (egress TLS
#   may be intercepted). They reach each RUN step through a scratch directory mounted over
#   /root (pip reads ~/.config/pip/pip.conf), so nothing of them is committed to the image:
#   a mount over a path that exists leaves no trace in the layer, unlike a new mount point;
# - the image a --tag named before is removed once the build moved the tag away (unless a
#   container or another image still uses it).
#
# usage: docker/podman-build.sh [podman build options] CONTEXT
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export CONTAINERS_CONF=${CONTAINERS_CONF:-$here/containers.conf}

home=$(mktemp -d /var/tmp/pg-sfs-build-home.XXXXXX)
trap 'rm -rf --one-file-system "$home"' EXIT
chmod 0700 "$home"
mkdir -p "$home/.config/pip"

# The host's pip settings that make sense inside a container: package indexes reached
# over http(s) (not file:// ones or local paths), trusted hosts, timeout, retries, proxy,
# in pip's order of precedence (global files, user files, PIP_CONFIG_FILE, PIP_* variables).
python3 - "$home/.config/pip" <<'EOF'
import configparser
import os
import shutil
import sys
from pathlib import Path

out = Path(sys.argv[1])
KEYS = ("index-url", "extra-index-url", "trusted-host", "timeout", "default-timeout", "retries", "proxy", "cert")
SECTIONS = ("global", "download", "install")
home = Path.home()
xdg_dirs = os.environ.get("XDG_CONFIG_DIRS") or "/etc/xdg"
files = [Path(d) / "pip" / "pip.conf" for d in xdg_dirs.split(":") if d]
files += [Path("/etc/pip.conf"), home / ".pip" / "pip.conf",
          Path(os.environ.get("XDG_CONFIG_HOME") or home / ".config") / "pip" / "pip.conf"]
if os.environ.get("PIP_CONFIG_FILE"):
    files.append(Path(os.environ["PIP_CONFIG_FILE"]))
settings = {s: {} for s in SECTIONS}
for path in files:
    parser = configparser.RawConfigParser()
    try:
        parser.read(path)
    except (OSError, configparser.Error):
        continue
    for section in SECTIONS:
        if parser.has_section(section):
            for key in KEYS:
                if parser.has_option(section, key):
                    settings[section][key] = parser.get(section, key)
for key in KEYS:
    value = os.environ.get("PIP_" + key.upper().replace("-", "_"))
    if value is not None:
        settings["global"][key] = value

cert = None
for section in SECTIONS:
    found = settings[section].pop("cert", None)
    if found and Path(found).is_file():
        cert = Path(found)
    if "default-timeout" in settings[section]:
        settings[section]["timeout"] = settings[section].pop("default-timeout")
    for key in ("index-url", "extra-index-url"):
        if key in settings[section]:
            urls = [u for u in settings[section][key].split() if u.startswith(("http://", "https://"))]
            if urls:
                settings[section][key] = " ".join(urls)
            else:
                del settings[section][key]
if cert is None and Path("/etc/ssl/certs/ca-certificates.crt").is_file():
    cert = Path("/etc/ssl/certs/ca-certificates.crt")
if cert is not None:
    shutil.copyfile(cert, out / "ca.crt")
    settings["global"]["cert"] = "/root/.config/pip/ca.crt"

lines = []
for section in SECTIONS:
    if settings[section]:
        lines.append(f"[{section}]")
        lines += [f"{key} = {value}" for key, value in sorted(settings[section].items())]
(out / "pip.conf").write_text("\n".join(lines) + "\n")
EOF

# The images the tags pointed to before, to remove below once nothing refers to them.
replaced=()
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
    case ${args[i]} in
        -t | --tag) tag=${args[i + 1]:-} ;;
        --tag=*) tag=${args[i]#--tag=} ;;
        *) continue ;;
    esac
    replaced+=("$(podman image inspect --format '{{ .Id }}' "$tag" 2>/dev/null || :)")
done

podman build --network host --pull=never --volume "$home:/root" "$@"

for id in "${replaced[@]}"; do
    if [ -n "$id" ] && [ "$(podman image inspect --format '{{ len .RepoTags }}' "$id" 2>/dev/null)" = 0 ]; then
        podman rmi "$id" >/dev/null 2>&1 || :  # fails, harmlessly, while a container or child image uses it
    fi
done
