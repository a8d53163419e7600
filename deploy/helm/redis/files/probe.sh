#!/bin/sh
# probe.sh redis|sentinel: exit 0 when the local server answers PONG.
. "${SCRIPTS_DIR:-$(dirname "$0")}/common.sh"
case "${1:-redis}" in
  redis) port="$MY_REDIS_PORT" ;;
  sentinel) port="$MY_SENTINEL_PORT" ;;
  *) exit 2 ;;
esac
[ "$(cli 127.0.0.1 "$port" PING)" = "PONG" ]
