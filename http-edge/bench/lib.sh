# Shared by the bench scripts (wrk.sh, cluster-wrk.sh); sourced after .ci/env.

# need_commands CMD:PACKAGE ...: installs (apt) the packages of the commands missing.
need_commands() {
  local missing=() pair
  for pair in "$@"; do
    command -v "${pair%%:*}" >/dev/null || missing+=("${pair#*:}")
  done
  [ "${#missing[@]}" -eq 0 ] && return 0
  echo "installing ${missing[*]}" >&2
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
}

# seckill_binary ROOT: prints the seckill binary to measure: SECKILL_BIN (a binary built
# elsewhere, an older commit for a before/after), or a release build of ROOT.
seckill_binary() {
  if [ -n "${SECKILL_BIN:-}" ]; then
    echo "$SECKILL_BIN"
    return
  fi
  echo "building seckill (release)" >&2
  (cd "$1" && cargo build --release -p seckill-http-edge --bin seckill >&2)
  echo "$CARGO_TARGET_DIR/release/seckill"
}
