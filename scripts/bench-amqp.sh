#!/usr/bin/env bash
# Records through RabbitMQ against the embedded queue, in one run on this machine
# (figures for docs/PERFORMANCE.md). Both runs send the same lab results over MLLP
# (32 connections) and time from the first message until every record is committed in
# the record store:
#   1. embedded: one `halong serve` (journal → mapping → outbox → record store);
#   2. amqp: an edge (`--role edge`, publisher confirms) and a store (`--role store`,
#      manual acks after the store commit) as two processes, through the RabbitMQ at
#      127.0.0.1:5672, on their own prefix (deleted afterwards).
# Prints records/s of each and their ratio. Traffic goes to 127.0.0.1 only; every wait
# is bounded.
# usage: scripts/bench-amqp.sh [MESSAGES]   (default 20000)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-20000}
N=$(( N / 2 * 2 ))
URL="amqp://guest:guest@127.0.0.1:5672/%2f"
PREFIX="halong-bench.$$"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target}
cargo build --release --quiet
BIN=$CARGO_TARGET_DIR/release/halong
WORK=$(mktemp -d)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    for q in "$PREFIX.store" "$PREFIX.dead"; do rabbitmqctl delete_queue "$q" >/dev/null 2>&1 || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

rabbitmqctl await_startup --timeout 60 >/dev/null

SAMPLES="samples/oru_r01_nguyen_thi_ngoc_anh_cbc.hl7 samples/oru_r01_dang_van_duc_glucose.hl7"
RECORDS_PER_PAIR=$("$BIN" map --config halong.toml $SAMPLES | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))')
RECORDS=$(( N / 2 * RECORDS_PER_PAIR ))
echo "$N messages, $RECORDS records per run"

# config DIR ROLE KIND
config() {
    mkdir -p "$1"
    ln -sfn "$PWD/routes" "$1/routes"
    ln -sfn "$PWD/mappings" "$1/mappings"
    local listeners="" queue="[queue]
kind = \"$3\""
    if [ "$2" != store ]; then
        listeners="[[listener]]
name = \"his\"
kind = \"mllp\"
bind = \"127.0.0.1:0\"
[[listener]]
name = \"lab\"
kind = \"mllp\"
bind = \"127.0.0.1:0\"
max_connections = 64"
    fi
    if [ "$3" = amqp ]; then
        queue="$queue
url = \"$URL\"
prefix = \"$PREFIX\"
role = \"$2\""
    fi
    cat > "$1/halong.toml" <<CONF
[data]
dir = "$1/data"
$listeners
$queue
[http]
bind = "127.0.0.1:0"
[log]
level = "info"
CONF
}

# start DIR -> sets LAB and HTTP from the process's log
start() {
    "$BIN" serve --config "$1/halong.toml" 2> "$1/log" &
    PIDS+=($!)
    for _ in $(seq 300); do grep -q "HTTP API ready" "$1/log" && break; sleep 0.1; done
    grep -q "HTTP API ready" "$1/log" || { cat "$1/log"; exit 1; }
    LAB=$(grep -o 'listener=lab addr=[0-9.:]*' "$1/log" | sed 's/.*addr=//' || true)
    HTTP=$(grep -o 'http_addr=[0-9.:]*' "$1/log" | sed 's/.*http_addr=//')
}

json_field() { curl -s "http://$1$2" | python3 -c "import json,sys; d=json.load(sys.stdin); print($3)"; }

# wait_for LIMIT_SECONDS COMMAND...: until COMMAND prints a number >= TARGET
wait_for() {
    local target=$1 limit=$2; shift 2
    local deadline=$(( $(date +%s) + limit ))
    while [ "$("$@")" -lt "$target" ]; do
        [ "$(date +%s)" -lt "$deadline" ] || { echo "timed out" >&2; exit 1; }
        sleep 0.1
    done
}

send() { "$BIN" send $SAMPLES --to "$1" --repeat $(( N / 2 )) --concurrency 32 --unique-ids 2>/dev/null; }

# 1. embedded
config "$WORK/emb" all embedded
start "$WORK/emb"
EMB_HTTP=$HTTP
stored_msgs() { json_field "$EMB_HTTP" /health 'd["journal"]["messages"].get("stored",0)'; }
T0=$(date +%s.%N)
send "$LAB" > "$WORK/emb.send"
wait_for "$N" 600 stored_msgs
T1=$(date +%s.%N)
EMB=$(python3 -c "print(round($RECORDS/($T1-$T0)))")
echo "embedded: $RECORDS records in $(python3 -c "print(f'{$T1-$T0:.2f}')") s: $EMB records/s ($(sed -n 's/.*s: \([0-9]*\) msg\/s.*/\1/p' "$WORK/emb.send") msg/s acknowledged)"
kill "${PIDS[0]}"; wait "${PIDS[0]}" 2>/dev/null || true; PIDS=()

# 2. amqp: store first (declares the queue), then the edge
config "$WORK/store" store amqp
start "$WORK/store"
STORE_HTTP=$HTTP
config "$WORK/edge" edge amqp
start "$WORK/edge"
EDGE_LAB=$LAB
stored_records() { json_field "$STORE_HTTP" /ready 'd["broker"]["stored"]'; }
T0=$(date +%s.%N)
send "$EDGE_LAB" > "$WORK/amqp.send"
wait_for "$RECORDS" 600 stored_records
T1=$(date +%s.%N)
AMQP=$(python3 -c "print(round($RECORDS/($T1-$T0)))")
echo "amqp (edge → RabbitMQ → store, confirms, acks after commit): $RECORDS records in $(python3 -c "print(f'{$T1-$T0:.2f}')") s: $AMQP records/s ($(sed -n 's/.*s: \([0-9]*\) msg\/s.*/\1/p' "$WORK/amqp.send") msg/s acknowledged)"
echo "ratio amqp / embedded: $(python3 -c "print(f'{$AMQP/$EMB:.2f}')")"
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB; $(uname -r); RabbitMQ $(rabbitmqctl version 2>/dev/null)"
