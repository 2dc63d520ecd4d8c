#!/usr/bin/env bash
# Order events under a sale: how far behind each --events target falls while orders are
# accepted as fast as this machine takes them, and how fast each one drains its backlog.
#
#   1. seckill (release, RocksDB, --durability sync, --auth header, rate limits off) with
#      one target at a time, or all three at once (TARGETS): NATS JetStream (SECKILL_BENCH_EVENTS_NATS, default nats://127.0.0.1:4222),
#      RabbitMQ (SECKILL_BENCH_EVENTS_AMQP, default amqp://guest:guest@127.0.0.1:5672/%2f)
#      and a webhook answered 200 by nginx (its cost is not counted);
#   2. wrk buys for DURATION (default 10s) on a large-stock item, one new shopper per request
#      (the accept path of wrk.sh), while /metrics is read every second;
#   3. after the load, the script waits (at most 300 s) until every target is caught up.
#
# Prints the accepted orders/s, and per target the largest `seckill_events_lag_seconds` and
# `seckill_events_lag_events` seen during the sale and the events/s delivered from the start
# of the load until it was caught up. A target that is down is reported as such.
# Usage: http-edge/bench/events-lag.sh   (env: DURATION=10s THREADS=2 CONNECTIONS=256 RATE=0
#        TARGETS=each (a fresh server per target, one at a time) | all (the three at once) | both
#        | nats | rabbitmq | webhook (that one alone))
set -euo pipefail

DURATION="${DURATION:-10s}"
# Orders a second to aim at (0: as fast as the machine takes them). Issue 14's lag target is
# set at 10,000 orders/s.
RATE="${RATE:-0}"
THREADS="${THREADS:-2}"
CONNECTIONS="${CONNECTIONS:-256}"
nats_url="${SECKILL_BENCH_EVENTS_NATS:-nats://127.0.0.1:4222}"
amqp_url="${SECKILL_BENCH_EVENTS_AMQP:-amqp://guest:guest@127.0.0.1:5672/%2f}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
# shellcheck source=/dev/null
source "$root/.ci/env"

if ! command -v wrk >/dev/null || ! command -v nginx >/dev/null; then
  echo "installing wrk and nginx-light" >&2
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk nginx-light >&2
fi
echo "building seckill (release)" >&2
(cd "$root" && cargo build --release -p seckill-http-edge --bin seckill >&2)
seckill="$CARGO_TARGET_DIR/release/seckill"

work="$(mktemp -d)"
nginx_pid=""
server_pid=""
stop_server() {
  [ -n "$server_pid" ] || return 0
  kill -TERM "$server_pid" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$server_pid" 2>/dev/null || true
  wait "$server_pid" 2>/dev/null || true
  server_pid=""
}

cleanup() {
  stop_server
  if [ -n "$nginx_pid" ]; then
    kill -TERM "$nginx_pid" 2>/dev/null || true
    wait "$nginx_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# --- the webhook receiver: nginx answering every POST 200, no logging
hook_port="$(free_port)"
mkdir -p "$work/nginx"
cat > "$work/nginx/nginx.conf" <<EOF
worker_processes 1;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $work/nginx/body;
  proxy_temp_path $work/nginx/proxy;
  fastcgi_temp_path $work/nginx/fastcgi;
  uwsgi_temp_path $work/nginx/uwsgi;
  scgi_temp_path $work/nginx/scgi;
  server {
    listen 127.0.0.1:$hook_port;
    location / { return 200; }
  }
}
EOF
nginx -p "$work/nginx" -c "$work/nginx/nginx.conf" -g 'daemon off;' &
nginx_pid="$!"

printf '[rate_limit.token]\nper_s = 0\nburst = 0\n[rate_limit.purchase]\nper_s = 0\nburst = 0\n[rate_limit.orders]\nper_s = 0\nburst = 0\n' \
  > "$work/seckill.toml"
cat > "$work/purchase.lua" <<'EOF2'
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end
local run = "0"
local pause_ms = 0
function init(args)
  run = args[1] or "0"
  pause_ms = tonumber(args[2] or "0")
end
-- With RATE set: each connection waits this long before its next request, so that all of
-- them together send about RATE requests a second (a little less: the answer's own time).
function delay()
  return pause_ms
end
local counter = 0
request = function()
  counter = counter + 1
  return wrk.format("POST", nil,
    {["X-User-Id"] = "u" .. run .. "-" .. tid .. "-" .. counter, ["Content-Type"] = "application/json"},
    '{"request_id":"r' .. counter .. '"}')
end
EOF2

# Prints "target<TAB>lag_seconds<TAB>lag_events" per target from /metrics.
lags() {
  curl -sf "http://127.0.0.1:$port/metrics" | awk '
    /^seckill_events_lag_seconds\{/ { match($0, /target="[^"]*"/); t=substr($0, RSTART+8, RLENGTH-9); s[t]=$NF }
    /^seckill_events_lag_events\{/ { match($0, /target="[^"]*"/); t=substr($0, RSTART+8, RLENGTH-9); e[t]=$NF }
    END { for (t in s) printf "%s\t%s\t%s\n", t, s[t], (t in e ? e[t] : 0) }'
}

# One sale against a fresh server with the --events arguments given; prints its table.
run_case() {
  local label="$1"; shift
  port="$(free_port)"
  rm -rf "$work/data"
  RUST_LOG=warn "$seckill" serve --auth header --admin-key bench-admin-key \
    --data-dir "$work/data" --listen "127.0.0.1:$port" --config "$work/seckill.toml" \
    --durability sync "$@" > "$work/seckill.out" 2> "$work/seckill.err" &
  server_pid="$!"
  for _ in $(seq 1 300); do
    curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && break
    kill -0 "$server_pid" 2>/dev/null || break
    sleep 0.1
  done
  curl -sf "http://127.0.0.1:$port/readyz" >/dev/null || { cat "$work/seckill.err" >&2; exit 1; }
  local promotion
  promotion="events-$(date +%s%N)"
  curl -sf -X POST "http://127.0.0.1:$port/admin/promotions" \
    -H 'Authorization: Bearer bench-admin-key' -H 'Content-Type: application/json' \
    -d '{"id": "'"$promotion"'", "name": "Events bench", "starts_at": "2020-01-01T00:00:00Z",
         "ends_at": "2099-01-01T00:00:00Z", "require_token": false,
         "items": [{"sku": "plenty", "stock": 1000000000, "price_cents": 100}]}' >/dev/null

  : > "$work/samples"
  local started_s load_end_s url wrk_pid orders_per_s non2xx
  local pause_ms=0
  [ "$RATE" -gt 0 ] && pause_ms=$(( CONNECTIONS * 1000 / RATE ))
  started_s=$(date +%s.%N)
  url="http://127.0.0.1:$port/promotions/$promotion/items/plenty/purchase"
  wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" -s "$work/purchase.lua" "$url" -- "$promotion" "$pause_ms" \
    > "$work/wrk.out" 2>&1 &
  wrk_pid="$!"
  while kill -0 "$wrk_pid" 2>/dev/null; do
    lags | sed "s/^/$(date +%s.%N)\t/" >> "$work/samples" || true
    sleep 1
  done
  wait "$wrk_pid" || true
  load_end_s=$(date +%s.%N)
  orders_per_s="$(awk '/Requests\/sec/ {print $2}' "$work/wrk.out")"
  non2xx="$(awk '/Non-2xx/ {print $NF}' "$work/wrk.out")"

  # Caught up: a target's lag in events is 0; the time each first got there.
  declare -A caught=()
  local now all target seconds events delivered max_s max_e done_s rate
  for _ in $(seq 1 300); do
    now=$(date +%s.%N)
    while IFS=$'\t' read -r target seconds events; do
      [ -z "${caught[$target]:-}" ] && [ "${events%.*}" = "0" ] && caught[$target]="$now"
    done < <(lags)
    all=1
    while IFS=$'\t' read -r target _ _; do [ -n "${caught[$target]:-}" ] || all=0; done < <(lags)
    [ "$all" = 1 ] && break
    sleep 1
  done
  local totals
  totals="$(curl -sf "http://127.0.0.1:$port/metrics" | awk '/^seckill_events_delivered_total\{/ { match($0, /target="[^"]*"/); print substr($0, RSTART+8, RLENGTH-9) "\t" $NF }')"
  echo
  echo "[$label] accepted $orders_per_s orders/s (non-2xx: ${non2xx:-0}); load ran $(awk -v a="$started_s" -v b="$load_end_s" 'BEGIN { printf "%.1f", b - a }') s"
  printf '%-48s %10s %12s %12s %10s\n' target "max lag s" "max lag ev" "delivered" "events/s"
  while IFS=$'\t' read -r target delivered; do
    max_s="$(awk -F'\t' -v t="$target" '$2 == t && $3 > m { m = $3 } END { print m + 0 }' "$work/samples")"
    max_e="$(awk -F'\t' -v t="$target" '$2 == t && $4 > m { m = $4 } END { print m + 0 }' "$work/samples")"
    done_s="${caught[$target]:-}"
    if [ -n "$done_s" ]; then
      rate="$(awk -v d="$delivered" -v a="$started_s" -v b="$done_s" 'BEGIN { printf "%.0f", d / (b - a) }')"
    else
      rate="behind"
    fi
    printf '%-48s %10s %12s %12s %10s\n' "$target" "$max_s" "$max_e" "${delivered%.*}" "$rate"
  done <<< "$totals"
  stop_server
}

nats=(--events "$nats_url")
amqp=(--events "$amqp_url")
hook=(--events "http://127.0.0.1:$hook_port/hook" --events-secret bench-secret)
echo "order events during a sale: wrk -t$THREADS -c$CONNECTIONS -d$DURATION (aiming at ${RATE} orders/s, 0 = flat out) on the accept path, $(nproc) cores, seckill release, RocksDB sync"
case "${TARGETS:-each}" in
  each)
    run_case "nats alone" "${nats[@]}"
    run_case "rabbitmq alone" "${amqp[@]}"
    run_case "webhook alone" "${hook[@]}"
    ;;
  all) run_case "all three" "${nats[@]}" "${amqp[@]}" "${hook[@]}" ;;
  nats) run_case "nats alone" "${nats[@]}" ;;
  rabbitmq) run_case "rabbitmq alone" "${amqp[@]}" ;;
  webhook) run_case "webhook alone" "${hook[@]}" ;;
  both)
    run_case "nats alone" "${nats[@]}"
    run_case "rabbitmq alone" "${amqp[@]}"
    run_case "webhook alone" "${hook[@]}"
    run_case "all three" "${nats[@]}" "${amqp[@]}" "${hook[@]}"
    ;;
  *) echo "events-lag.sh: TARGETS must be each, all or both" >&2; exit 2 ;;
esac
