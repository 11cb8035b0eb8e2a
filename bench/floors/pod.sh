#!/bin/bash
# Runs a command as it would run in a pod: `ip netns exec` already gave it the pod's network
# namespace, resolv.conf and a mount namespace of its own; a private tmpfs on /run/postgresql
# keeps its sockets apart from the host's and from other pods'.
set -eu
mount -t tmpfs -o "mode=2775,uid=$(id -u postgres),gid=$(id -g postgres)" tmpfs /run/postgresql
exec "$@"
