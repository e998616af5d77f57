#!/usr/bin/env bash
# DICOM intake benchmark: the same instances sent with dcmtk `storescu` over one
# association to halong (archive, journal and records on), to dcmtk `storescp` and to
# Orthanc, in the same run; prints instances/s, MB/s and the ratios.
#
#   bash scripts/bench-dicom.sh            # 1,000 small CT instances and 4 large ones
#   SMALL=300 LARGE=2 LARGE_MB=64 ROUNDS=5 bash scripts/bench-dicom.sh
#                                          # ROUNDS (default 3): the three servers are
#                                          # measured in turn this many times; the ratios
#                                          # of each round and their medians are printed
#   bash scripts/bench-dicom.sh --memory   # one 512 MB multi-frame instance into halong;
#                                          # prints halong's peak RSS (VmHWM)
#
# Needs dcmtk, pydicom and (optional) orthanc; installs the first two like the test
# script does. Every server runs on 127.0.0.1 with its data in a temporary directory.
set -euo pipefail
cd "$(dirname "$0")/.."

SMALL=${SMALL:-1000}
LARGE=${LARGE:-4}
LARGE_MB=${LARGE_MB:-128}
MEMORY_MB=${MEMORY_MB:-512}
ROUNDS=${ROUNDS:-3}
MODE=${1:-throughput}

log() { printf '==> %s\n' "$*" >&2; }
export TCP_NODELAY=1   # dcmtk stalls ~90 ms per PDU on Linux loopback without it
STORESCU=/usr/bin/storescu
STORESCP=/usr/bin/storescp

if [ ! -x "$STORESCU" ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q dcmtk >/dev/null
fi
python3 -c 'import pydicom' 2>/dev/null ||
    python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore pydicom

WORK=$(mktemp -d /tmp/halong-bench-dicom.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

log "building halong (release)"
cargo build --release --quiet
HALONG=${CARGO_TARGET_DIR:-target}/release/halong

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Instances: SMALL copies of pydicom's CT_small (39 KB) with new UIDs in one study, and
# LARGE multi-frame CT instances of LARGE_MB each.
generate() {
    python3 - "$@" <<'PY'
import os, sys
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid
out, small, large, large_mb = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
ct = dcmread(get_testdata_file("CT_small.dcm"))
study = generate_uid()
os.makedirs(f"{out}/small", exist_ok=True)
os.makedirs(f"{out}/large", exist_ok=True)
series = generate_uid()
for i in range(small):
    ct.StudyInstanceUID = study
    ct.SeriesInstanceUID = series
    ct.SOPInstanceUID = generate_uid()
    ct.file_meta.MediaStorageSOPInstanceUID = ct.SOPInstanceUID
    ct.InstanceNumber = i + 1
    ct.save_as(f"{out}/small/{i:05d}.dcm")
frame = ct.Rows * ct.Columns * 2
frames = max(1, large_mb * 1024 * 1024 // frame)
series = generate_uid()
for i in range(large):
    ct.SeriesInstanceUID = series
    ct.SOPInstanceUID = generate_uid()
    ct.file_meta.MediaStorageSOPInstanceUID = ct.SOPInstanceUID
    ct.NumberOfFrames = frames
    ct.PixelData = os.urandom(frame) * frames
    ct.save_as(f"{out}/large/{i:03d}.dcm")
PY
}

# Sends every file of $1 to port $2 (AE $3) over one association; prints seconds.
send() {
    local start end
    start=$(date +%s.%N)
    "$STORESCU" -aet BENCH -aec "$3" -to 60 -ta 60 -td 600 --propose-lossless +sd 127.0.0.1 "$2" "$1" >/dev/null 2>"$WORK/storescu.err" ||
        { log "storescu to $3 failed:"; cat "$WORK/storescu.err" >&2; return 1; }
    end=$(date +%s.%N)
    python3 -c "print(f'{$end - $start:.3f}')"
}

wait_port() {
    for _ in $(seq 1 200); do
        python3 -c "import socket,sys; socket.create_connection(('127.0.0.1',$1),0.2)" 2>/dev/null && return 0
        sleep 0.05
    done
    log "nothing listens on $1"; return 1
}

start_halong() {
    local port=$1 http=$2 dir=$3
    mkdir -p "$dir"
    cp -r routes mappings "$dir/"
    cat >"$dir/halong.toml" <<TOML
[data]
dir = "data"
[[listener]]
name = "his"
kind = "mllp"
bind = "127.0.0.1:0"
[[listener]]
name = "lab"
kind = "mllp"
bind = "127.0.0.1:0"
[[listener]]
name = "pacs"
kind = "dicom"
bind = "127.0.0.1:$port"
ae_title = "HALONG"
max_pdu_bytes = 131072
[http]
bind = "127.0.0.1:$http"
[log]
level = "warn"
TOML
    "$HALONG" serve --config "$dir/halong.toml" 2>"$WORK/halong.log" &
    HALONG_PID=$!
    PIDS+=("$HALONG_PID")
    wait_port "$port"
}

stored_count() { curl -s "http://127.0.0.1:$1/health" | python3 -c 'import json,sys; print(json.load(sys.stdin)["journal"]["messages"]["stored"])'; }

if [ "$MODE" = "--memory" ]; then
    log "generating one ${MEMORY_MB} MB multi-frame instance"
    generate "$WORK/mem" 0 1 "$MEMORY_MB"
    port=$(free_port); http=$(free_port)
    start_halong "$port" "$http" "$WORK/halong-mem"
    log "sending it to halong"
    secs=$(send "$WORK/mem/large" "$port" HALONG)
    size=$(du -m "$WORK/mem/large" | cut -f1)
    hwm=$(awk '/VmHWM/ {print $2}' "/proc/$HALONG_PID/status")
    echo "instance: ${size} MB in ${secs} s; halong peak RSS (VmHWM): $((hwm / 1024)) MB"
    exit 0
fi

log "generating $SMALL small and $LARGE large (${LARGE_MB} MB) instances"
generate "$WORK/in" "$SMALL" "$LARGE" "$LARGE_MB"
small_mb=$(du -sm "$WORK/in/small" | cut -f1)
large_mb=$(du -sm "$WORK/in/large" | cut -f1)

have_orthanc=0
command -v Orthanc >/dev/null 2>&1 && have_orthanc=1
[ "$have_orthanc" = 1 ] || log "Orthanc is not installed (apt-get install orthanc); its column is left out"
# One line per round: halong small, halong large, storescp small, storescp large, Orthanc
# small, Orthanc large (seconds), and the records' lag. The servers take turns within a
# round, and each round starts them on empty data, so a drift of the machine's speed
# during the run touches all three alike. Nothing is deleted until the end: on ext4,
# creating files right after deleting thousands is slower, and that would fall on
# whichever server came next.
ROWS=()
for round in $(seq 1 "$ROUNDS"); do
    log "round $round of $ROUNDS"
    declare -A T=()
    # halong
    port=$(free_port); http=$(free_port)
    start_halong "$port" "$http" "$WORK/halong-$round"
    T[halong_small]=$(send "$WORK/in/small" "$port" HALONG)
    T[halong_large]=$(send "$WORK/in/large" "$port" HALONG)
    start=$(date +%s.%N)
    until [ "$(stored_count "$http")" -ge $((SMALL + LARGE)) ]; do sleep 0.05; done
    records_lag=$(python3 -c "print(f'{$(date +%s.%N) - $start:.3f}')")
    kill "$HALONG_PID"; wait "$HALONG_PID" 2>/dev/null || true

    # dcmtk storescp (one process, writes every instance to disk)
    port=$(free_port)
    mkdir -p "$WORK/storescp-$round"
    "$STORESCP" -aet STORESCP -od "$WORK/storescp-$round" --max-pdu 131072 "$port" 2>/dev/null &
    SCP_PID=$!; PIDS+=("$SCP_PID")
    wait_port "$port"
    T[storescp_small]=$(send "$WORK/in/small" "$port" STORESCP)
    T[storescp_large]=$(send "$WORK/in/large" "$port" STORESCP)
    kill "$SCP_PID"; wait "$SCP_PID" 2>/dev/null || true

    # Orthanc
    if [ "$have_orthanc" = 1 ]; then
        port=$(free_port); http=$(free_port)
        mkdir -p "$WORK/orthanc-$round/db"
        cat >"$WORK/orthanc-$round/orthanc.json" <<JSON
{ "Name": "bench", "StorageDirectory": "$WORK/orthanc-$round/db", "IndexDirectory": "$WORK/orthanc-$round/db",
  "DicomAet": "ORTHANC", "DicomPort": $port, "HttpPort": $http, "RemoteAccessAllowed": false,
  "AuthenticationEnabled": false, "DicomCheckCalledAet": false, "Plugins": [] }
JSON
        Orthanc "$WORK/orthanc-$round/orthanc.json" >/dev/null 2>&1 &
        ORTHANC_PID=$!; PIDS+=("$ORTHANC_PID")
        wait_port "$port"
        T[orthanc_small]=$(send "$WORK/in/small" "$port" ORTHANC)
        T[orthanc_large]=$(send "$WORK/in/large" "$port" ORTHANC)
        kill "$ORTHANC_PID"; wait "$ORTHANC_PID" 2>/dev/null || true
    fi
    ROWS+=("${T[halong_small]},${T[halong_large]},${T[storescp_small]},${T[storescp_large]},${T[orthanc_small]:-0},${T[orthanc_large]:-0},$records_lag")
done

python3 - "$SMALL" "$LARGE" "$small_mb" "$large_mb" "$have_orthanc" "${ROWS[@]}" <<'PY'
import statistics, sys
small, large, small_mb, large_mb = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
have_orthanc = sys.argv[5] == "1"
rounds = [list(map(float, r.split(","))) for r in sys.argv[6:]]
print(f"small: {small} instances, {small_mb:.0f} MB; large: {large} instances, {large_mb:.0f} MB; one association each")
ratios = {"storescp small": [], "storescp large": [], "orthanc small": [], "orthanc large": []}
for n, (hs, hl, ss, sl, os_, ol, lag) in enumerate(rounds, 1):
    print(f"round {n}")
    print(f"  {'server':<10}{'small inst/s':>14}{'small MB/s':>12}{'large MB/s':>12}")
    rows = [("halong", hs, hl), ("storescp", ss, sl)] + ([("orthanc", os_, ol)] if have_orthanc else [])
    for name, s, l in rows:
        print(f"  {name:<10}{small / s:>14.0f}{small_mb / s:>12.1f}{large_mb / l:>12.1f}")
    print(f"  halong / storescp: small {ss / hs:.2f}x, large MB/s {sl / hl:.2f}x")
    ratios["storescp small"].append(ss / hs)
    ratios["storescp large"].append(sl / hl)
    if have_orthanc:
        print(f"  halong / orthanc:  small {os_ / hs:.2f}x, large MB/s {ol / hl:.2f}x")
        ratios["orthanc small"].append(os_ / hs)
        ratios["orthanc large"].append(ol / hl)
    print(f"  halong records: all {small + large} ImagingStudy updates stored {lag:.2f} s after the last C-STORE-RSP")
print(f"medians over {len(rounds)} rounds (halong / peer):")
for name, values in ratios.items():
    if values:
        print(f"  {name:<15} {statistics.median(values):.2f}x   (rounds: {', '.join(f'{v:.2f}' for v in values)})")
PY
