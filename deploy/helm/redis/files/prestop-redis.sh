#!/bin/sh
# preStop of the redis container: a master hands over before it stops (graceful failover), bounded in time.
. "${SCRIPTS_DIR:-$(dirname "$0")}/common.sh"
[ "$(role_of 127.0.0.1 "$MY_REDIS_PORT")" = "master" ] || exit 0
for s in $SENTINEL_NODES; do
  if [ "$(cli "${s%:*}" "${s##*:}" SENTINEL FAILOVER "$MASTER_NAME" || true)" = "OK" ]; then break; fi
done
i=0
while [ "$i" -lt "${PRESTOP_FAILOVER_S:-15}" ]; do
  [ "$(role_of 127.0.0.1 "$MY_REDIS_PORT")" = "master" ] || exit 0
  sleep 1; i=$((i + 1))
done
exit 0
