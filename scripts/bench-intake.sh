#!/usr/bin/env bash
# Intake benchmark, all in one run on this machine (figures for docs/PERFORMANCE.md):
#   1. this disk's fdatasync rate (dd with O_DSYNC, 4 KiB writes): the baseline;
#   2. ACKed-durable throughput with 1 connection and with 32 connections (halong send);
#   3. sustained end-to-end rate: messages sent until every one is searchable (stored).
# Prints each figure and its ratio to the baseline. Traffic goes to 127.0.0.1 only.
# usage: scripts/bench-intake.sh [MESSAGES_PER_RUN]   (default 100000)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-100000}
cargo build --release --quiet
BIN=$PWD/target/release/halong
WORK=$(mktemp -d)
trap 'kill $SERVER 2>/dev/null || true; rm -rf "$WORK"' EXIT

# 1. fdatasync baseline, on the same file system as the data directory.
SYNCS=2000
start=$(date +%s.%N)
dd if=/dev/zero of="$WORK/syncprobe" bs=4k count=$SYNCS oflag=dsync status=none
end=$(date +%s.%N)
FSYNC_RATE=$(python3 -c "print(round($SYNCS/($end-$start)))")
rm -f "$WORK/syncprobe"
echo "fdatasync rate (dd oflag=dsync, 4 KiB): $FSYNC_RATE/s"

cat > "$WORK/halong.toml" <<CONF
[data]
dir = "$WORK/data"
[[listener]]
name = "his"
kind = "mllp"
bind = "127.0.0.1:0"
[[listener]]
name = "lab"
kind = "mllp"
bind = "127.0.0.1:0"
[http]
bind = "127.0.0.1:0"
[log]
level = "info"
CONF
ln -s "$PWD/routes" "$WORK/routes"
ln -s "$PWD/mappings" "$WORK/mappings"
"$BIN" serve --config "$WORK/halong.toml" 2> "$WORK/log" &
SERVER=$!
for _ in $(seq 100); do grep -q "HTTP API ready" "$WORK/log" && break; sleep 0.1; done
HIS=$(grep -o 'listener=his addr=[0-9.:]*' "$WORK/log" | sed 's/.*addr=//')
LAB=$(grep -o 'listener=lab addr=[0-9.:]*' "$WORK/log" | sed 's/.*addr=//')
HTTP=$(grep -o 'http_addr=[0-9.:]*' "$WORK/log" | sed 's/.*http_addr=//')
stored() { curl -s "http://$HTTP/health" | python3 -c 'import json,sys; print(json.load(sys.stdin)["journal"]["messages"]["stored"])'; }

rate_of() { sed -n 's/.*s: \([0-9]*\) msg\/s.*/\1/p'; }

# 2. ACKed-durable throughput.
ONE=$(( N / 20 > 2000 ? 2000 : N / 20 ))
R1=$("$BIN" send samples/adt_a04_dang_van_duc.hl7 --to "$HIS" --repeat "$ONE" --concurrency 1 --unique-ids 2>/dev/null)
echo "1 connection:   $R1"
R32=$("$BIN" send samples/adt_a04_dang_van_duc.hl7 --to "$HIS" --repeat "$N" --concurrency 32 --unique-ids 2>/dev/null)
echo "32 connections: $R32"

# 3. End to end: a fresh mix of results until all are stored. First let the
# admissions above finish, so they do not count.
BASE=$(( ONE + N ))
while [ "$(stored)" -lt "$BASE" ]; do sleep 0.2; done
# The engine's CPU time (user + system, clock ticks) around the end-to-end phase: CPU per
# message is steadier than a rate on a shared machine.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$SERVER/stat"; }
C0=$(cpu_ticks)
T0=$(date +%s.%N)
"$BIN" send samples/oru_r01_nguyen_thi_ngoc_anh_cbc.hl7 samples/oru_r01_dang_van_duc_glucose.hl7 \
    --to "$LAB" --repeat $(( N / 2 )) --concurrency 32 --unique-ids > "$WORK/e2e" 2>/dev/null
WANT=$(( BASE + N ))
while [ "$(stored)" -lt "$WANT" ]; do sleep 0.2; done
T1=$(date +%s.%N)
C1=$(cpu_ticks)
E2E=$(python3 -c "print(round($N/($T1-$T0)))")
CPU_US=$(python3 -c "print(round(($C1-$C0)/$(getconf CLK_TCK)/$N*1e6))")
echo "end to end (results, 5-6 records each, searchable): $N messages, $E2E msg/s; intake alone: $(rate_of < "$WORK/e2e") msg/s; engine CPU $CPU_US µs per message"
echo "engine peak resident memory: $(awk '/VmHWM/{print int($2/1024)}' "/proc/$SERVER/status") MB"

python3 - "$FSYNC_RATE" "$(echo "$R1" | rate_of)" "$(echo "$R32" | rate_of)" "$E2E" <<'PY'
import sys
fs, one, many, e2e = map(float, sys.argv[1:])
print(f"ratios: 1 connection / fdatasync = {one/fs:.2f}; 32 connections / fdatasync = {many/fs:.1f}; "
      f"end-to-end / 32-connection intake = {e2e/many:.2f}")
PY
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB; $(uname -r)"
