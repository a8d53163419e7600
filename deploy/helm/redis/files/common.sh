# Shared helpers for the redis and sentinel containers (POSIX sh; sourced, not run).
#
# Environment (set by the StatefulSet; the local "pods" test overrides the addresses):
#   POD_NAME        redis-<ordinal>
#   REDIS_NODES     space separated host:port of every pod's redis, in ordinal order
#   SENTINEL_NODES  space separated host:port of every pod's sentinel, in ordinal order
#   MASTER_NAME     sentinel master name
#   REDIS_PASSWORD  optional; redis and sentinel password
#   CONF_DIR        writable dir for the generated configs (sentinel rewrites its file)
#   DATA_DIR        redis data dir (AOF/RDB)
#   BIND_ADDR       listen address(es), default "* -::*"
#   SCRIPTS_DIR     where these files live
set -eu

POD_INDEX="${POD_NAME##*-}"
BIND_ADDR="${BIND_ADDR:-* -::*}"

# nth N word...: the Nth (0-based) of the following words
nth() {
  n="$1"; shift
  i=0
  for w in "$@"; do
    if [ "$i" -eq "$n" ]; then echo "$w"; return 0; fi
    i=$((i + 1))
  done
  return 1
}

# shellcheck disable=SC2086
MY_REDIS_ADDR="$(nth "$POD_INDEX" $REDIS_NODES)"
# shellcheck disable=SC2086
MY_SENTINEL_ADDR="$(nth "$POD_INDEX" $SENTINEL_NODES)"
MY_REDIS_HOST="${MY_REDIS_ADDR%:*}"
MY_REDIS_PORT="${MY_REDIS_ADDR##*:}"
MY_SENTINEL_HOST="${MY_SENTINEL_ADDR%:*}"
MY_SENTINEL_PORT="${MY_SENTINEL_ADDR##*:}"

log() { echo "$(date -u +%Y-%m-%dT%H:%M:%SZ) [$POD_NAME] $*" >&2; }

# cli HOST PORT ARGS...: redis-cli with a bounded run time and the password from the environment
cli() {
  h="$1"; p="$2"; shift 2
  REDISCLI_AUTH="${REDIS_PASSWORD:-}" timeout 3 redis-cli -h "$h" -p "$p" --raw "$@" 2>/dev/null
}

# conf_quote VALUE: a redis.conf double-quoted string
conf_quote() {
  printf '"%s"' "$(printf '%s' "$1" | sed 's/\\/\\\\/g; s/"/\\"/g')"
}

# master_from_sentinels [SKIP_ADDR]: host:port of the master as the (other) sentinels see it, or nothing
master_from_sentinels() {
  skip="${1:-}"
  for s in $SENTINEL_NODES; do
    [ "$s" = "$skip" ] && continue
    out="$(cli "${s%:*}" "${s##*:}" SENTINEL get-master-addr-by-name "$MASTER_NAME" || true)"
    # shellcheck disable=SC2086
    set -- $out
    if [ "$#" -eq 2 ]; then echo "$1:$2"; return 0; fi
  done
  return 0
}

# role_of HOST PORT: "master", "slave <host>:<port>", or nothing when unreachable
role_of() {
  out="$(cli "$1" "$2" ROLE || true)"
  # shellcheck disable=SC2086
  set -- $out
  case "${1:-}" in
    master) echo master ;;
    slave) echo "slave $2:$3" ;;
    *) return 0 ;;
  esac
}
