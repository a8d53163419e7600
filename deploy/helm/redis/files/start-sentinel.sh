#!/bin/sh
# sentinel container: find the current master (other sentinels, else this pod's redis), write the config, exec.
. "${SCRIPTS_DIR:-$(dirname "$0")}/common.sh"

master=""
i=0
while [ -z "$master" ]; do
  master="$(master_from_sentinels "$MY_SENTINEL_ADDR")"
  if [ -z "$master" ]; then
    role="$(role_of "$MY_REDIS_HOST" "$MY_REDIS_PORT")"
    case "$role" in
      master) master="$MY_REDIS_ADDR" ;;
      slave*) master="${role#slave }" ;;
    esac
  fi
  if [ -z "$master" ]; then
    i=$((i + 1))
    [ "$i" -ge "${SENTINEL_WAIT_S:-120}" ] && { log "no master found"; exit 1; }
    sleep 1
  fi
done

mkdir -p "$CONF_DIR"
conf="$CONF_DIR/sentinel.conf"
{
  echo "bind $BIND_ADDR"
  echo "port $MY_SENTINEL_PORT"
  echo "dir $CONF_DIR"
  echo "sentinel resolve-hostnames yes"
  echo "sentinel announce-hostnames yes"
  echo "sentinel announce-ip $MY_SENTINEL_HOST"
  echo "sentinel announce-port $MY_SENTINEL_PORT"
  echo "sentinel monitor $MASTER_NAME ${master%:*} ${master##*:} $SENTINEL_QUORUM"
  cat "$SCRIPTS_DIR/sentinel.conf"
  if [ -n "${REDIS_PASSWORD:-}" ]; then
    echo "sentinel auth-pass $MASTER_NAME $(conf_quote "$REDIS_PASSWORD")"
    echo "requirepass $(conf_quote "$REDIS_PASSWORD")"
    echo "sentinel sentinel-pass $(conf_quote "$REDIS_PASSWORD")"
  fi
} >"$conf"
log "sentinel monitoring $master"
exec redis-server "$conf" --sentinel
