#!/bin/sh
# Start the substation of one Kubernetes StatefulSet pod: its id from the pod's ordinal.
#
# A StatefulSet names its pods NAME-0, NAME-1, ... and keeps each name, and the volume claimed
# for it (volumeClaimTemplates), across restarts, reschedules and rollouts. So pod `substation-2`
# always runs as `substation-2`, with its sessions in /data/substation-2.sqlite3 on its own
# volume: a restarted pod resumes them, and `kubectl scale statefulset substation --replicas=4`
# adds substation-3. Only the ordinal is taken from the hostname, so a kustomize namePrefix
# (`prod-substation-2`) keeps the ids. Extra arguments go to the substation.
# (Compose has no ordinals; its replicas claim numbered slots instead: substation-entrypoint.sh.)
set -eu
host=${HOSTNAME:-$(hostname)}
ordinal=${host##*-}
case $ordinal in
    '' | *[!0-9]*)
        echo "substation-statefulset-entrypoint: the hostname '$host' does not end in -N" \
             "(a StatefulSet pod's ordinal); run this in a StatefulSet" >&2
        exit 1 ;;
esac
state_dir=${SUBSTATION_STATE_DIR:-/data}
exec python -m substation --id "substation-$ordinal" \
    --state-path "$state_dir/substation-$ordinal.sqlite3" "$@"
