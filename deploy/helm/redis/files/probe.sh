#!/bin/sh
# probe.sh redis|sentinel [live]: exit 0 when the local server answers PONG. With `live` (the liveness probe), a redis
# answering LOADING counts too: a replica loading a full resync (or its AOF at start) answers so for as long as its
# data takes to load, and restarting it would only start the load again.
. "${SCRIPTS_DIR:-$(dirname "$0")}/common.sh"
case "${1:-redis}" in
  redis) port="$MY_REDIS_PORT" ;;
  sentinel) port="$MY_SENTINEL_PORT" ;;
  *) exit 2 ;;
esac
reply="$(cli 127.0.0.1 "$port" PING)" || true
[ "$reply" = "PONG" ] && exit 0
if [ "${2:-}" = "live" ]; then
  case "$reply" in LOADING*) exit 0 ;; esac
fi
exit 1
