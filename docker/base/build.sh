#!/bin/bash
# `make base-image`: the local stand-in for postgres:14.5 (see Dockerfile here), built with
# podman and tagged IMAGE (localhost/postgres-standin:14.5), which `make image` passes to
# docker/Dockerfile as its BASE_IMAGE: no registry is asked, and no image built on it carries the
# official name.
#
# Skipped when IMAGE exists and was built from the current docker/base/* (a label on the
# image holds their digest); the debootstrap rootfs is redone only when mkrootfs.sh changed.
#
# usage: docker/base/build.sh [IMAGE]   (as root)
set -euo pipefail

image=${1:-localhost/postgres-standin:14.5}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export CONTAINERS_CONF=${CONTAINERS_CONF:-$here/../containers.conf}
rootfs=localhost/pg-sfs-rootfs:bullseye
label=pg-sfs-agent.base-image.inputs
rootfs_label=pg-sfs-agent.rootfs.inputs

digest() { (cd "$here" && sha256sum -- "$@" | sha256sum | cut -c1-64); }
built_from() { podman image inspect --format "{{ index .Labels \"$2\" }}" "$1" 2>/dev/null || :; }
image_id() { podman image inspect --format '{{ .Id }}' "$1" 2>/dev/null || :; }

# The official docker-entrypoint.sh is not kept in this repository (its reference copy lives
# beside the checkout, in shared/): it joins the build context only for the build.
official=${PGSFS_OFFICIAL_ENTRYPOINT:-$here/../../../shared/reference/official-image/docker-entrypoint.sh}
context=$(mktemp -d /var/tmp/pg-sfs-base-context.XXXXXX)
trap 'rm -rf --one-file-system "$context"' EXIT
cp -p "$here"/* "$context/"
if [ -f "$official" ]; then
    cp -p "$official" "$context/docker-entrypoint.sh"
    license=$(dirname "$official")/LICENSE.docker-library-postgres
    [ -f "$license" ] && cp "$license" "$context/LICENSE.docker-entrypoint"
else
    echo "base-image: $official not found: the stand-in entrypoint replaces it" >&2
    cp -p "$here/standin-entrypoint.sh" "$context/docker-entrypoint.sh"
fi
chmod 0755 "$context/docker-entrypoint.sh"
[ -f "$context/LICENSE.docker-entrypoint" ] || : > "$context/LICENSE.docker-entrypoint"

mapfile -t files < <(cd "$context" && find . -maxdepth 1 -type f -printf '%P\n' | LC_ALL=C sort)
inputs=$(cd "$context" && sha256sum -- "${files[@]}" | sha256sum | cut -c1-64)
if [ "$(built_from "$image" "$label")" = "$inputs" ]; then
    echo "base-image: $image is up to date (docker/base unchanged)"
    exit 0
fi

rootfs_inputs=$(digest mkrootfs.sh)
old_rootfs=$(image_id "$rootfs")
if [ "$(built_from "$rootfs" "$rootfs_label")" != "$rootfs_inputs" ]; then
    "$here/mkrootfs.sh" "$rootfs" "$rootfs_label=$rootfs_inputs"
fi

"$here/../podman-build.sh" \
    --build-arg ROOTFS="$rootfs" \
    --label "$label=$inputs" \
    --tag "$image" \
    "$context"

# The rootfs this replaced, unless images built on it still use it.
if [ -n "$old_rootfs" ] && [ "$(podman image inspect --format '{{ len .RepoTags }}' "$old_rootfs" 2>/dev/null)" = 0 ]; then
    podman rmi "$old_rootfs" >/dev/null 2>&1 || :
fi
echo "base-image: $image ($(podman image inspect --format '{{ .Size }}' "$image" | numfmt --to=si)B)"
