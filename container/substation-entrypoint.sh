#!/bin/sh
# Start one substation replica under a stable name, with its state file on the shared volume.
#
# Every replica of the `substation` service mounts the same volume at /data. A replica claims the
# first free slot N (an exclusive lock on /data/slot-N.lock, held by the substation process for its
# whole life, released by the kernel when it exits or is killed), then runs as `substation-N` with
# its sessions in /data/substation-N.sqlite3. So a crashed replica that restarts, or the replicas
# of a `docker compose down` + `up`, take their slots back and resume their sessions, and
# `--scale substation=4` adds substation-3 and substation-4. Extra arguments go to the substation.
set -eu
max_slots=${SUBSTATION_MAX_SLOTS:-64}
n=1
while [ "$n" -le "$max_slots" ]; do
    exec 9>>"/data/slot-$n.lock"
    if flock --nonblock 9; then
        exec python -m substation --id "substation-$n" --state-path "/data/substation-$n.sqlite3" "$@"
    fi
    exec 9>&-
    n=$((n + 1))
done
echo "substation-entrypoint: all $max_slots slots in /data are taken" >&2
exit 1
