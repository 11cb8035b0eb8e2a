#!/bin/sh
# The stand-in base's entrypoint when the official one is not at hand: build.sh puts the
# official docker-entrypoint.sh (from the reference copy beside the checkout) into the build
# context when it can, and this one otherwise. It runs any other command unchanged and says
# plainly that it does not initialise a database.
set -e
case "$1" in -*) set -- postgres "$@" ;; esac
if [ "$1" = postgres ]; then
    echo "stand-in postgres base: built without the official docker-entrypoint.sh;" \
         "use an image built on it (make image), or run postgres directly" >&2
    exit 64
fi
exec "$@"
