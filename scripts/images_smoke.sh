#!/usr/bin/env bash
# Image build smoke test without a Docker engine: build the gateway and CPU worker images with buildah from a locally
# made Debian base (mmdebstrap), then run each entrypoint inside its image (buildah run --isolation chroot) until its
# /healthz answers. All container storage lives in a scratch folder (default build/images-smoke), never the system's.
#
# Network: mmdebstrap fetches Debian packages through apt; uv installs from uv.lock through the host's uv cache (mounted
# into the build; wheels missing there come from PyPI, or fail with SMOKE_UV_OFFLINE=true). Usage: scripts/images_smoke.sh [gateway|inference-worker ...]
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
work="${SMOKE_DIR:-$root/build/images-smoke}"
# Storage driver: overlay where the kernel offers it (root on ext4/xfs: a layer stores only what it changed), else vfs,
# which copies every layer in full (~16 GB for both builds: 6 of the 7 minutes the builds took on a 2-core machine).
driver="${SMOKE_STORAGE_DRIVER:-auto}"
suite="${SMOKE_SUITE:-bookworm}"
services=("$@")
[[ ${#services[@]} -gt 0 ]] || services=(gateway inference-worker)

for cmd in buildah mmdebstrap redis-server curl uv; do
  command -v "$cmd" >/dev/null || { echo "images-smoke: '$cmd' is required" >&2; exit 1; }
done

mkdir -p "$work"
export TMPDIR="$work/tmp"
mkdir -p "$TMPDIR"
if [[ "$driver" == auto ]]; then
  probe=(buildah --root "$work/probe/storage" --runroot "$work/probe/run" --storage-driver overlay)
  driver=vfs
  if c="$("${probe[@]}" from scratch 2>/dev/null)"; then
    "${probe[@]}" mount "$c" >/dev/null 2>&1 && driver=overlay
    "${probe[@]}" rm "$c" >/dev/null 2>&1 || true
  fi
  rm -rf "$work/probe" 2>/dev/null || true
fi
# One store per driver: a store made with one cannot be opened with the other.
storage="$work/storage-$driver"
runroot="$work/run-$driver"
bah() { buildah --root "$storage" --runroot "$runroot" --storage-driver "$driver" "$@"; }

pids=()
ctrs=()
cleanup() {
  for pid in "${pids[@]}"; do
    kill -TERM -- "-$pid" 2>/dev/null || true
  done
  sleep 1
  for pid in "${pids[@]}"; do
    kill -KILL -- "-$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  for c in "${ctrs[@]}"; do bah rm "$c" >/dev/null 2>&1 || true; done
  # overlay: a killed `buildah run` leaves its container's layers mounted and the store keeps a mount of its own;
  # unmount them all so that the scratch folder can be deleted (make images-smoke-clean, a CI workspace).
  if [[ "$driver" == overlay ]]; then
    bah umount --all >/dev/null 2>&1 || true
    awk -v p="$storage/" 'index($2, p) == 1 {print $2}' /proc/mounts | sort -r | while read -r m; do
      umount -l "$m" 2>/dev/null || true
    done
  fi
}
trap cleanup EXIT

t0=$SECONDS
step() { echo "images-smoke: [$((SECONDS - t0))s] $*"; }
step "storage driver $driver ($storage)"

# 1. base image: Debian minbase + python3 (3.11 on bookworm), made locally
base="localhost/rtai-smoke-base:$suite"
if ! bah inspect --type image "$base" >/dev/null 2>&1; then
  step "mmdebstrap $suite -> $base"
  tarball="$work/base-$suite.tar"
  [[ -s "$tarball" ]] || mmdebstrap --quiet --variant=minbase --include=python3,ca-certificates,passwd \
    "$suite" "$tarball"
  c="$(bah from scratch)"; ctrs+=("$c")
  bah add "$c" "$tarball" / >/dev/null
  bah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$c"
  bah commit --quiet "$c" "$base" >/dev/null
fi

# 2. uv "image": the host's uv binary at /uv (what ghcr.io/astral-sh/uv provides)
uv_real="$(command -v uv)"
if [[ "$(head -c 4 "$uv_real" | od -An -c | tr -d ' ')" != '177ELF' ]] && command -v pyenv >/dev/null; then
  uv_real="$(pyenv which uv)"   # pyenv shim -> the real binary
fi
uvimg="localhost/rtai-smoke-uv:$(uv --version | awk '{print $2}')"
if ! bah inspect --type image "$uvimg" >/dev/null 2>&1; then
  step "uv image $uvimg"
  c="$(bah from scratch)"; ctrs+=("$c")
  bah copy "$c" "$uv_real" /uv >/dev/null
  bah commit --quiet "$c" "$uvimg" >/dev/null
fi
uv_cache="$(uv cache dir)"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# a Redis for the readiness checks
rport="$(free_port)"
setsid redis-server --port "$rport" --bind 127.0.0.1 --save '' --appendonly no >"$work/redis.log" 2>&1 &
pids+=($!)

for svc in "${services[@]}"; do
  tag="localhost/rtai-$svc:smoke"
  step "buildah bud $svc"
  ca=()
  if [[ -s /etc/ssl/certs/ca-certificates.crt ]]; then   # the host's CA bundle (TLS proxies) for uv's downloads
    ca=(-v /etc/ssl/certs/ca-certificates.crt:/etc/rtai-build-ca.crt:ro --build-arg SSL_CERT_FILE=/etc/rtai-build-ca.crt)
  fi
  # docker format: the OCI format drops the Dockerfile's SHELL (-eu), and RUN steps would no longer fail fast.
  bah bud --quiet --isolation chroot --format docker --layers "${ca[@]}" \
    -f "$root/services/$svc/Dockerfile" \
    --build-arg "BASE_IMAGE=$base" --build-arg "UV_IMAGE=$uvimg" \
    --build-arg UV_CACHE_DIR=/uv-cache --build-arg "UV_OFFLINE=${SMOKE_UV_OFFLINE:-false}" \
    -v "$uv_cache:/uv-cache" \
    -t "$tag" "$root" >/dev/null
  step "built $tag"

  port="$(free_port)"
  case "$svc" in
    gateway) env=(--env "RTAI_GW_PORT=$port" --env "RTAI_GW_REDIS__URL=redis://127.0.0.1:$rport/0" --env RTAI_GW_HOST=127.0.0.1) ;;
    # embed: the MiniLM weights ship in the image and its int8 graph is written at first start, without torch
    inference-worker) env=(--env "RTAI_WORKER_HTTP_PORT=$port" --env "RTAI_WORKER_REDIS__URL=redis://127.0.0.1:$rport/0" --env RTAI_WORKER_HTTP_HOST=127.0.0.1
                           --env "RTAI_WORKER_TASKS=sentiment=vader,embed=minilm-embed") ;;
  esac
  bah inspect --type image "$tag" >"$work/$svc.inspect.json"
  entry="$(python3 -c 'import json,sys; print(json.dumps(json.load(open(sys.argv[1]))["OCIv1"]["config"]["Entrypoint"]))' "$work/$svc.inspect.json")"
  user="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["OCIv1"]["config"].get("User", ""))' "$work/$svc.inspect.json")"
  [[ "${user%%:*}" =~ ^[1-9][0-9]*$ ]] || { echo "images-smoke: $tag runs as '$user', not a non-root uid" >&2; exit 1; }
  mapfile -t argv < <(python3 -c 'import json,sys; print("\n".join(json.loads(sys.argv[1])))' "$entry")
  c="$(bah from --pull-never "$tag")"; ctrs+=("$c")
  step "run $svc: ${argv[*]} (user $user) on :$port"
  setsid buildah --root "$storage" --runroot "$runroot" --storage-driver "$driver" \
    run --isolation chroot --user "$user" "${env[@]}" "$c" -- "${argv[@]}" >"$work/$svc.log" 2>&1 &
  pid=$!
  pids+=("$pid")
  ok=""
  for _ in $(seq 1 120); do
    if curl -fsS "http://127.0.0.1:$port/healthz" >/dev/null 2>&1; then ok=1; break; fi
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.5
  done
  if [[ -z "$ok" ]]; then
    echo "images-smoke: $svc did not answer /healthz; log:" >&2
    tail -n 40 "$work/$svc.log" >&2
    exit 1
  fi
  # Ready: Redis reached and (worker) every model loaded and warmed.
  ready=""
  for _ in $(seq 1 120); do
    ready="$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/readyz" || true)"
    [[ "$ready" == 200 ]] && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.5
  done
  if [[ "$ready" != 200 ]]; then
    echo "images-smoke: $svc /readyz answered '$ready'; log:" >&2
    tail -n 40 "$work/$svc.log" >&2
    exit 1
  fi
  step "$svc /healthz 200, /readyz 200"
  kill -TERM -- "-$pid" 2>/dev/null || true
  for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
done
# Keep only the base images unless SMOKE_KEEP=1 (under vfs the service images are ~16 GB)
if [[ "${SMOKE_KEEP:-0}" != 1 ]]; then
  for c in "${ctrs[@]}"; do bah rm "$c" >/dev/null 2>&1 || true; done
  ctrs=()
  for svc in "${services[@]}"; do bah rmi -f "localhost/rtai-$svc:smoke" >/dev/null 2>&1 || true; done
  bah rmi --prune >/dev/null 2>&1 || true
fi
step "done ($(du -sh "$work" | cut -f1) in $work)"
