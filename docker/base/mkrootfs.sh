#!/bin/bash
# The stand-in for debian:bullseye-slim that docker/base/Dockerfile builds on:
# `debootstrap --variant=minbase bullseye` into a folder, made "slim" the way the
# official Debian images are (docs, man pages and locales excluded from dpkg, apt
# keeps no caches), then imported into local container storage as IMAGE.
#
# usage: mkrootfs.sh IMAGE [LABEL=VALUE...]   (as root; needs debootstrap and podman)
#
# The Debian mirror is the host's own (the first `URIs:` of the host's apt sources,
# or DEBIAN_MIRROR / DEBIAN_SECURITY_MIRROR): no mirror is named here.
set -euo pipefail

image=${1:?usage: mkrootfs.sh IMAGE [LABEL=VALUE...]}
shift
suite=bullseye

# The first URI of the host's deb sources whose suites are (not) the security ones.
host_uri() {  # $1: security | main
    local want=$1 files=()
    shopt -s nullglob
    files=(/etc/apt/sources.list.d/*.sources)
    shopt -u nullglob
    {
        # deb822 stanzas (Debian 12's /etc/apt/sources.list.d/debian.sources)
        if ((${#files[@]})); then
            awk 'BEGIN { RS = ""; FS = "\n" }
                 { uri = ""; sec = 0; deb = 0; off = 0
                   for (i = 1; i <= NF; i++) {
                     if ($i ~ /^URIs:/) { split(substr($i, 6), u, " "); uri = u[1] }
                     if ($i ~ /^Suites:/ && $i ~ /-security/) sec = 1
                     if ($i ~ /^Types:/ && $i ~ /(^|[ \t])deb([ \t]|$)/) deb = 1
                     if ($i ~ /^Enabled:[ \t]*no/) off = 1
                   }
                   if (uri != "" && deb && !off) print (sec ? "security" : "main"), uri }' "${files[@]}"
        fi
        # one-line sources (older hosts)
        { cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null || true; } |
            awk '$1 == "deb" { i = 2; if ($2 ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
                               print ($(i + 1) ~ /-security/ ? "security" : "main"), $i }'
    } | awk -v want="$want" '$1 == want && !found { print $2; found = 1 }'
}

mirror=${DEBIAN_MIRROR:-$(host_uri main)}
security=${DEBIAN_SECURITY_MIRROR:-$(host_uri security)}
if [ -z "$mirror" ]; then
    echo "mkrootfs: no Debian mirror in the host's apt sources; set DEBIAN_MIRROR" >&2
    exit 1
fi

work=$(mktemp -d /var/tmp/pg-sfs-rootfs.XXXXXX)
trap 'rm -rf --one-file-system "$work"' EXIT
rootfs=$work/rootfs

echo "mkrootfs: debootstrap --variant=minbase $suite from the host's mirror"
debootstrap --variant=minbase --arch="$(dpkg --print-architecture)" \
    --keyring=/usr/share/keyrings/debian-archive-keyring.gpg \
    "$suite" "$rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 || {
    tail -n 30 "$work/debootstrap.log" >&2
    exit 1
}

# The apt sources of debian:bullseye-slim, on the host's mirrors.
{
    echo "deb $mirror $suite main"
    [ -z "$security" ] || echo "deb $security $suite-security main"
    echo "deb $mirror $suite-updates main"
} >"$rootfs/etc/apt/sources.list"

# "slim": what the official Debian images exclude from dpkg and keep out of apt.
cat >"$rootfs/etc/dpkg/dpkg.cfg.d/docker" <<'EOF'
# This is the "slim" variant of the Debian base image.
# Many files which are normally unnecessary in containers are excluded,
# and this configuration file keeps them that way.
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/lintian/overrides/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/man/*
EOF
cat >"$rootfs/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
echo 'Acquire::Languages "none";' >"$rootfs/etc/apt/apt.conf.d/docker-no-languages"
echo 'Acquire::GzipIndexes "true";' >"$rootfs/etc/apt/apt.conf.d/docker-gzip-indexes"
echo 'Apt::AutoRemove::SuggestsImportant "false";' >"$rootfs/etc/apt/apt.conf.d/docker-autoremove-suggests"
# No service may start while packages are installed in a build.
printf '#!/bin/sh\nexit 101\n' >"$rootfs/usr/sbin/policy-rc.d"
chmod 0755 "$rootfs/usr/sbin/policy-rc.d"

# Remove what the exclusions keep out from now on, and the host's traces.
find "$rootfs/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
find "$rootfs/usr/share/doc" -mindepth 1 -type d -empty -delete
rm -rf "$rootfs"/usr/share/{groff,info,linda,lintian/overrides,locale,man}/*
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb \
    "$rootfs"/var/log/*.log "$rootfs"/var/log/apt/*
: >"$rootfs/etc/resolv.conf"
: >"$rootfs/etc/hostname"

labels=()
for label in "$@"; do labels+=(--change "LABEL $label"); done
tar --numeric-owner --xattrs --acls -C "$rootfs" -c . |
    podman import --quiet \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD ["bash"]' \
        "${labels[@]}" \
        --message "debootstrap --variant=minbase $suite, slim" \
        - "$image" >/dev/null
echo "mkrootfs: $image"
