#!/usr/bin/env bash
# Plays a small version of every scenario against a seckill server that seckill-load starts
# itself (temporary data directory, free port), and fails if any invariant check fails.
# Each scenario takes seconds (pay-or-expire waits ~12 s for its 10 s payment timeout).
# Then a short bounded-memory soak (100,000 shoppers per phase instead of 2,000,000): fails
# if the server's RSS grows more than 64 MiB while it refuses them. Then a small bots-and-people
# comparison (500 bot ids, 50 people, 4 modes, seconds each).
#
# Usage: scenarios/ci.sh            (called by .ci/run)
#   SECKILL_CI_PROFILE=release      build and play release binaries instead of debug
#   SECKILL_TEST_REDIS_URL=redis://127.0.0.1:6379   also smoke-test the Redis + Lua baseline
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=/dev/null
source "$root/.ci/env"
cd "$root"

profile="${SECKILL_CI_PROFILE:-debug}"
packages=(-p seckill-http-edge -p seckill-scenarios -p seckill-baseline)
if [ "$profile" = release ]; then
  cargo build --release "${packages[@]}"
else
  cargo build "${packages[@]}"
fi
bin="$CARGO_TARGET_DIR/$profile"
load="$bin/seckill-load"
seckill="$bin/seckill"
scenarios="$root/scenarios/scenarios"
out="${SECKILL_CI_OUT:-$(mktemp -d -t seckill-scenarios-XXXXXX)}"
mkdir -p "$out"

failed=()
play() {
  local name="$1"
  shift
  echo "=== $name $*"
  if CI=1 "$load" run "$scenarios/$name.toml" --spawn "$seckill" --no-progress \
      --json "$out/$name.json" --chart "$out/$name.svg" "$@"; then
    :
  else
    failed+=("$name $*")
  fi
}

play flash-100 --scale 0.01 --auth jwt
play hot-sku --scale 0.02
play many-skus --scale 0.02
play pay-or-expire --scale 0.2
play restart-mid-sale --scale 0.05
# Async durability keeps every invariant while the server stays up.
play flash-100 --scale 0.01 --durability async

echo "=== soak --shoppers 100000"
if CI=1 "$load" soak --spawn "$seckill" --shoppers 100000 --max-duration-s 900 \
    --json "$out/soak.json"; then
  :
else
  failed+=("soak --shoppers 100000")
fi

# Bots and people (see the README's "Bots and people"): every invariant in each mode of the
# checks, and people must get a larger share of the stock with pow+limit than with off: the
# address limit holds the farm's 8 addresses to about a unit each per 2 s while people, who
# start up to 300 ms late, buy the rest, so the margin is wide (the README says why).
bots_args=(--bots 500 --people 50 --stock 20 --bot-concurrency 64 --pow-difficulty-bits 12)
echo "=== bots ${bots_args[*]}"
if CI=1 "$load" bots --spawn "$seckill" "${bots_args[@]}" --expect-people-gain \
    --json "$out/bots.json"; then
  :
else
  failed+=("bots ${bots_args[*]}")
fi

if [ -n "${SECKILL_TEST_REDIS_URL:-}" ]; then
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null || echo 18095)
  "$bin/seckill-baseline" --listen "127.0.0.1:$port" --admin-key ci-admin \
    --redis-url "$SECKILL_TEST_REDIS_URL" >"$out/baseline.log" 2>&1 &
  baseline_pid=$!
  for _ in $(seq 50); do
    curl -sf "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
    sleep 0.1
  done
  echo "=== baseline flash-100"
  CI=1 "$load" run "$scenarios/flash-100.toml" --url "http://127.0.0.1:$port" \
    --admin-key ci-admin --scale 0.01 --no-progress || failed+=("baseline flash-100")
  kill -TERM "$baseline_pid" 2>/dev/null || true
  wait "$baseline_pid" 2>/dev/null || true
  # The baseline keeps its state in Redis under bl:<promotion id>:*; leave Redis as we found it.
  if command -v redis-cli >/dev/null; then
    redis-cli -u "$SECKILL_TEST_REDIS_URL" --scan --pattern 'bl:flash-100-*' |
      xargs -r -n 500 redis-cli -u "$SECKILL_TEST_REDIS_URL" del >/dev/null || true
  fi
else
  echo "skipped: baseline smoke test (SECKILL_TEST_REDIS_URL unset)"
fi

echo "reports in $out"
if [ ${#failed[@]} -gt 0 ]; then
  printf 'FAILED scenario: %s\n' "${failed[@]}"
  exit 1
fi
echo "all scenarios passed"
