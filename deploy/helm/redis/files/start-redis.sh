#!/bin/sh
# redis container: decide master or replica, write the config, exec redis-server.
. "${SCRIPTS_DIR:-$(dirname "$0")}/common.sh"

has_data() { [ -n "$(ls -A "$DATA_DIR" 2>/dev/null)" ]; }

master=""
tries=0
while :; do
  master="$(master_from_sentinels)"
  # The sentinels still name this pod as master after a fast restart: with data, resume as master (they keep
  # agreeing); without data, wait for them to fail over rather than replicate an empty dataset to the others.
  if [ "$master" = "$MY_REDIS_ADDR" ] && ! has_data && [ "$tries" -lt "${EMPTY_MASTER_WAIT_S:-30}" ]; then
    tries=$((tries + 1)); sleep 1; continue
  fi
  break
done
if [ -z "$master" ]; then
  # No sentinel knows a master: a fresh cluster. Pod 0 bootstraps as master, the others replicate it.
  # shellcheck disable=SC2086
  master="$(nth 0 $REDIS_NODES)"
fi

mkdir -p "$CONF_DIR" "$DATA_DIR"
conf="$CONF_DIR/redis.conf"
cp "$SCRIPTS_DIR/redis.conf" "$conf"
{
  echo "bind $BIND_ADDR"
  echo "port $MY_REDIS_PORT"
  echo "dir $DATA_DIR"
  echo "replica-announce-ip $MY_REDIS_HOST"
  echo "replica-announce-port $MY_REDIS_PORT"
  if [ -n "${REDIS_PASSWORD:-}" ]; then
    echo "requirepass $(conf_quote "$REDIS_PASSWORD")"
    echo "masterauth $(conf_quote "$REDIS_PASSWORD")"
  fi
  if [ "$master" != "$MY_REDIS_ADDR" ]; then
    echo "replicaof ${master%:*} ${master##*:}"
  fi
} >>"$conf"
if [ "$master" = "$MY_REDIS_ADDR" ]; then log "starting as master"; else log "starting as replica of $master"; fi
exec redis-server "$conf"
