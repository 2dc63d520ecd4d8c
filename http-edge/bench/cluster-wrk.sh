#!/usr/bin/env bash
# Issue 13's figures for a cluster, with wrk, on this machine: the sold-out storm and the
# durable accept path through one node and through two, and what a request handed to
# another node costs (µs of CPU over both processes, and the added latency).
#
#   1. one node: a one-node cluster; wrk -t2 on it: the storm (purchases of a sold-out item,
#      409 sold_out at the gate), the token storm (tokens for it, likewise) and the accept
#      path (purchases of a large-stock item, 201 once a quorum of NATS servers has the order);
#   2. two nodes: a second node joins and takes half the partitions; one wrk -t1 per node at
#      once, half the connections each. The storm's item is owned by one of them: the other
#      hands its purchases to the owner (a live item's sold out is the owner's to say, see
#      engine/src/remote_view.rs) and refuses its tokens from the owner's view. The accept
#      path's requests go to the items `mine-a`
#      and `mine-b` in turn (owned by node a and node b), so each node hands half its
#      purchases to the other, as behind a round-robin load balancer;
#   3. the cost of handing over: wrk on node a alone with CONNECTIONS_LATENCY connections,
#      purchases of `mine-a` (decided on a) then of `mine-b` (handed to b): both processes'
#      CPU per request (utime + stime from /proc) and the p50 and p99 of each.
#
# Everything (both nodes, three NATS servers, PostgreSQL, wrk) shares this machine's cores:
# the two-node figures say what the software costs, not what two machines would carry
# (ARCHITECTURE.md's scaling model does that from these costs).
#
# Usage: SECKILL_WRK_NATS_URLS=nats://127.0.0.1:14222,... \
#        SECKILL_WRK_DATABASE_URL=postgres://postgres@127.0.0.1:5432/test \
#        http-edge/bench/cluster-wrk.sh
#   env: DURATION=5s ROUNDS=3 CONNECTIONS=256 CONNECTIONS_LATENCY=32 PARTITIONS=16
#        SECKILL_BIN=path to measure that binary instead of a release build.
# Needs wrk (Debian: apt-get install -y wrk; done here when missing).
set -euo pipefail

DURATION="${DURATION:-5s}"
ROUNDS="${ROUNDS:-3}"
CONNECTIONS="${CONNECTIONS:-256}"
CONNECTIONS_LATENCY="${CONNECTIONS_LATENCY:-32}"
PARTITIONS="${PARTITIONS:-16}"
nats_urls="${SECKILL_WRK_NATS_URLS:-}"
database_url="${SECKILL_WRK_DATABASE_URL:-}"
[ -n "$nats_urls" ] || { echo "cluster-wrk.sh: needs SECKILL_WRK_NATS_URLS (nats://HOST:PORT,...; NATS 2.11 or later, see .ci/nats-cluster)" >&2; exit 2; }
case "$database_url" in
  postgres://*|postgresql://*) ;;
  *) echo "cluster-wrk.sh: needs SECKILL_WRK_DATABASE_URL=postgres://..." >&2; exit 2 ;;
esac
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
# shellcheck source=/dev/null
source "$root/.ci/env"
# shellcheck source=/dev/null
source "$root/http-edge/bench/lib.sh"
need_commands wrk:wrk
seckill="$(seckill_binary "$root")"

work="$(mktemp -d)"
declare -A node_pid node_port
cleanup() {
  # SIGTERM (a clean hand-over of the leases), then SIGKILL after 10 s; by pid.
  for name in "${!node_pid[@]}"; do kill -TERM "${node_pid[$name]}" 2>/dev/null || true; done
  for name in "${!node_pid[@]}"; do
    for _ in $(seq 1 100); do kill -0 "${node_pid[$name]}" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "${node_pid[$name]}" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
tag="$(printf '%04X%04X%04X' "$RANDOM" "$RANDOM" "$RANDOM")"
printf '[rate_limit.token]\nper_s = 0\nburst = 0\n[rate_limit.purchase]\nper_s = 0\nburst = 0\n[rate_limit.orders]\nper_s = 0\nburst = 0\n' > "$work/seckill.toml"

# Starts node $1 of the cluster and waits until it is ready.
start_node() {
  local name="$1" port
  port="$(free_port)"
  RUST_LOG=warn "$seckill" serve --auth header --admin-key bench-admin-key \
    --data-dir "$work/data-$name" --listen "127.0.0.1:$port" --config "$work/seckill.toml" \
    --cluster "$nats_urls" --node-id "$name" --advertise "http://127.0.0.1:$port" \
    --partitions "$PARTITIONS" --replicas 3 --cluster-prefix "C$tag" --database-url "$database_url" \
    > "$work/$name.out" 2> "$work/$name.err" &
  node_pid[$name]="$!"
  node_port[$name]="$port"
  for _ in $(seq 1 600); do
    curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && return 0
    kill -0 "${node_pid[$name]}" 2>/dev/null || break
    sleep 0.1
  done
  echo "cluster-wrk.sh: node $name is not ready:" >&2; cat "$work/$name.err" >&2; exit 1
}
url() { echo "http://127.0.0.1:${node_port[$1]}$2"; }
# Calls node $1 has handed to other nodes so far.
forwarded() {
  curl -sf "$(url "$1" /metrics)" | awk '/^seckill_cluster_forward_seconds_count/ {s += $2} END {print s + 0}'
}
# Node $1's partition count, by its /admin/cluster.
held_by() {
  curl -sf "$(url "$1" /admin/cluster)" -H 'Authorization: Bearer bench-admin-key' \
    | python3 -c 'import json,sys; d=json.load(sys.stdin); print(sum(len(n["partitions"]) for n in d["nodes"] if n["node_id"]==sys.argv[1]))' "$1"
}
# CPU ticks (utime + stime) of the processes $@ so far.
ticks() { for pid in "$@"; do awk '{sub(/^.*\) /, ""); print $12 + $13}' "/proc/$pid/stat"; done | awk '{s += $1} END {print s}'; }

promotion="bench-$tag"
items='{"sku": "gone", "stock": 0, "price_cents": 100}'
for n in $(seq 0 31); do items="$items, {\"sku\": \"plenty$n\", \"stock\": 1000000000, \"price_cents\": 100}"; done

# One new shopper per request; the path is the n-th of the paths given, in turn.
cat > "$work/purchase.lua" <<'EOF'
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end
local run, paths = "0", {}
function init(args)
  run = args[1] or "0"
  for i = 2, #args do paths[#paths + 1] = args[i] end
end
local counter = 0
request = function()
  counter = counter + 1
  local path = paths[(counter % #paths) + 1]
  local user = "u" .. run .. "-" .. tid .. "-" .. counter
  if string.sub(path, -6) == "/token" then
    return wrk.format("POST", path, {["X-User-Id"] = user})
  end
  return wrk.format("POST", path, {["X-User-Id"] = user, ["Content-Type"] = "application/json"},
    '{"request_id":"r' .. counter .. '"}')
end
EOF
run_tag=0
# wrk on node $1 with $2 threads and $3 connections, on the paths $4...: "req/s p50_ms p99_ms".
wrk_on() {
  local node="$1" threads="$2" connections="$3"; shift 3
  run_tag=$((run_tag + 1))
  local out
  out="$(wrk -t"$threads" -c"$connections" -d"$DURATION" --latency -s "$work/purchase.lua" "$(url "$node" /)" -- "$node$run_tag" "$@")"
  printf '%s\n' "$out" >> "$work/wrk.log"
  awk '
    function ms(v) { if (v ~ /us$/) { sub(/us$/, "", v); return v / 1000 } if (v ~ /ms$/) { sub(/ms$/, "", v); return v } sub(/s$/, "", v); return v * 1000 }
    /^Requests\/sec:/ {r = $2} $1 == "50%" {p50 = ms($2)} $1 == "99%" {p99 = ms($2)}
    /Non-2xx or 3xx responses:/ {bad = $5}
    END {printf "%s %.2f %.2f %d\n", r, p50, p99, bad}' <<<"$out"
}
median() { sort -g | awk '{v[NR]=$1} END { if (NR == 0) print "?"; else print v[int((NR + 1) / 2)] }'; }
col() { awk -v c="$2" '{print $c}' "$1" | median; }
item_path() { echo "/promotions/$promotion/items/$1/purchase"; }
token_path() { echo "/promotions/$promotion/items/$1/token"; }

# --- 1. one node
start_node a
curl -sf -X POST "$(url a /admin/promotions)" -H 'Authorization: Bearer bench-admin-key' \
  -H 'Content-Type: application/json' \
  -d '{"id": "'"$promotion"'", "name": "Bench", "starts_at": "2020-01-01T00:00:00Z",
       "ends_at": "2099-01-01T00:00:00Z", "require_token": false, "items": ['"$items"']}' >/dev/null
for round in $(seq 1 "$ROUNDS"); do
  echo "one node: round $round of $ROUNDS" >&2
  wrk_on a 2 "$CONNECTIONS" "$(item_path gone)" >> "$work/one-storm.txt"
  wrk_on a 2 "$CONNECTIONS" "$(token_path gone)" >> "$work/one-tokens.txt"
  wrk_on a 2 "$CONNECTIONS" "$(item_path plenty0)" >> "$work/one-accept.txt"
done

# --- 2. two nodes
start_node b
for _ in $(seq 1 300); do
  [ "$(held_by a)" = $((PARTITIONS / 2)) ] && [ "$(held_by b)" = $((PARTITIONS / 2)) ] && break
  sleep 0.1
done
echo "partitions: a holds $(held_by a), b holds $(held_by b)" >&2
# An item decided on each node: a purchase through node a is handed over, or not.
mine_a="" mine_b=""
for n in $(seq 0 31); do
  before="$(forwarded a)"
  # Until it sells (a partition may still be moving: 503 meanwhile).
  for _ in $(seq 1 50); do
    code="$(curl -s -o "$work/probe.out" -w '%{http_code}' -X POST "$(url a "$(item_path "plenty$n")")" \
      -H "X-User-Id: probe-$n" -H 'Content-Type: application/json' -d '{"request_id":"probe"}' || true)"
    [ "$code" = 201 ] && break
    before="$(forwarded a)"
    sleep 0.1
  done
  [ "$code" = 201 ] || { echo "cluster-wrk.sh: a probe purchase of plenty$n answered $code: $(cat "$work/probe.out")" >&2; exit 1; }
  if [ "$(forwarded a)" = "$before" ]; then [ -n "$mine_a" ] || mine_a="plenty$n"; else [ -n "$mine_b" ] || mine_b="plenty$n"; fi
  [ -n "$mine_a" ] && [ -n "$mine_b" ] && break
done
[ -n "$mine_a" ] && [ -n "$mine_b" ] || { echo "cluster-wrk.sh: no item found on each node" >&2; exit 1; }
half=$((CONNECTIONS / 2))
both() {
  local out_a="$1" out_b="$2"; shift 2
  wrk_on a 1 "$half" "$@" >> "$out_a" &
  local first="$!"
  wrk_on b 1 "$half" "$@" >> "$out_b"
  wait "$first"
}
for round in $(seq 1 "$ROUNDS"); do
  echo "two nodes: round $round of $ROUNDS" >&2
  both "$work/two-storm-a.txt" "$work/two-storm-b.txt" "$(item_path gone)"
  both "$work/two-tokens-a.txt" "$work/two-tokens-b.txt" "$(token_path gone)"
  both "$work/two-accept-a.txt" "$work/two-accept-b.txt" "$(item_path "$mine_a")" "$(item_path "$mine_b")"
  # --- 3. the cost of handing over, in the same rounds
  for kind in local handed; do
    [ "$kind" = local ] && sku="$mine_a" || sku="$mine_b"
    t0="$(ticks "${node_pid[a]}" "${node_pid[b]}")"
    line="$(wrk_on a 2 "$CONNECTIONS_LATENCY" "$(item_path "$sku")")"
    t1="$(ticks "${node_pid[a]}" "${node_pid[b]}")"
    requests="$(awk '/requests in/ {n = $1} END {print n}' "$work/wrk.log")"
    cpu_us="$(awk -v d=$((t1 - t0)) -v hz="$(getconf CLK_TCK)" -v n="$requests" 'BEGIN {printf "%.1f", d * 1e6 / hz / n}')"
    echo "$line $cpu_us" >> "$work/cost-$kind.txt"
  done
done
forwards="$(forwarded a)"

sum() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.0f", a + b}'; }
echo
echo "seckill cluster, wrk, $DURATION runs, median of $ROUNDS rounds, $PARTITIONS partitions, 3 NATS servers (--replicas 3), $(nproc) cores shared by everything"
printf '%-46s %10s %8s %8s\n' "scenario" "req/s" "p50 ms" "p99 ms"
printf '%-46s %10s %8s %8s\n' "one node: sold-out storm (-t2 -c$CONNECTIONS)" "$(col "$work/one-storm.txt" 1)" "$(col "$work/one-storm.txt" 2)" "$(col "$work/one-storm.txt" 3)"
printf '%-46s %10s %8s %8s\n' "one node: sold-out token storm" "$(col "$work/one-tokens.txt" 1)" "$(col "$work/one-tokens.txt" 2)" "$(col "$work/one-tokens.txt" 3)"
printf '%-46s %10s %8s %8s\n' "one node: durable accept path" "$(col "$work/one-accept.txt" 1)" "$(col "$work/one-accept.txt" 2)" "$(col "$work/one-accept.txt" 3)"
printf '%-46s %10s %8s %8s\n' "two nodes: sold-out storm (a + b, -t1 -c$half each)" "$(sum "$(col "$work/two-storm-a.txt" 1)" "$(col "$work/two-storm-b.txt" 1)")" "$(col "$work/two-storm-a.txt" 2)" "$(col "$work/two-storm-a.txt" 3)"
printf '%-46s %10s %8s %8s\n' "two nodes: sold-out token storm (a + b)" "$(sum "$(col "$work/two-tokens-a.txt" 1)" "$(col "$work/two-tokens-b.txt" 1)")" "$(col "$work/two-tokens-a.txt" 2)" "$(col "$work/two-tokens-a.txt" 3)"
printf '%-46s %10s %8s %8s\n' "two nodes: durable accept, half handed over" "$(sum "$(col "$work/two-accept-a.txt" 1)" "$(col "$work/two-accept-b.txt" 1)")" "$(col "$work/two-accept-a.txt" 2)" "$(col "$work/two-accept-a.txt" 3)"
echo
echo "a purchase handed to another node, wrk -t2 -c$CONNECTIONS_LATENCY on node a (CPU: both processes' utime + stime over the requests)"
printf '%-46s %10s %8s %8s %10s\n' "" "req/s" "p50 ms" "p99 ms" "CPU µs/req"
printf '%-46s %10s %8s %8s %10s\n' "decided on node a ($mine_a)" "$(col "$work/cost-local.txt" 1)" "$(col "$work/cost-local.txt" 2)" "$(col "$work/cost-local.txt" 3)" "$(col "$work/cost-local.txt" 5)"
printf '%-46s %10s %8s %8s %10s\n' "handed to node b ($mine_b)" "$(col "$work/cost-handed.txt" 1)" "$(col "$work/cost-handed.txt" 2)" "$(col "$work/cost-handed.txt" 3)" "$(col "$work/cost-handed.txt" 5)"
echo "calls node a handed to node b in all: $forwards"
# What the figures measure: the storms must be refusals (non-2xx), the accept paths sales.
for f in one-storm one-tokens one-accept two-storm-a two-storm-b two-tokens-a two-tokens-b two-accept-a two-accept-b cost-local cost-handed; do
  printf '%s: non-2xx answers per run %s\n' "$f" "$(awk '{printf "%s ", $4}' "$work/$f.txt")"
done
