#!/usr/bin/env bash
# User-space instructions per echoed message through one wsgate mode, counted by callgrind:
# repeatable for the same binary and load, whatever else the machine does, so it shows what a
# change to the hot path does where the throughput runs cannot tell it from the VM's noise.
#
#   tests/bench/callgrind.sh MODE SIZE [WSGATE_BINARY]
#   tests/bench/callgrind.sh relay 20                 # target/release/wsgate, 20 B messages
#   KEEP=1 tests/bench/callgrind.sh relay 1KiB old/wsgate   # keeps callgrind's output
#   TARGET_CPU=0 tests/bench/callgrind.sh passthrough 20     # wsgate on CPU 0, as in the bench
#   TARGET_CPU=0 tests/bench/callgrind.sh nginx 20           # nginx in its place, for reference
#
# MODE is echo, relay or passthrough, or nginx: the bench's nginx target (one worker, default
# buffers, run as one process), so the relay's count has the one it is compared with beside it
# (the CPU row of the bench's report). The load is `wsgate-bench load` with CONNS (100)
# connections, IN_FLIGHT (8) messages in flight each, for DURATION (3s). Counting starts after
# the first handshake and stops when the load ends, so startup is left out. Prints the load's
# JSON line, then `Ir=... msgs=... Ir/msg=...` and, per message, the inclusive counts of the
# session's hottest functions. Needs valgrind (Debian's package). Everything listens on
# 127.0.0.1 on ports chosen at run time and is stopped by PID on exit.

set -euo pipefail

MODE=${1:?usage: $0 echo|relay|passthrough|nginx SIZE [WSGATE_BINARY]}
SIZE=${2:?usage: $0 echo|relay|passthrough|nginx SIZE [WSGATE_BINARY]}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
WSGATE=${3:-$ROOT/target/release/wsgate}
BENCH=$ROOT/target/release/wsgate-bench
# shellcheck source=tests/bench/nginx-conf.sh
source "$ROOT/tests/bench/nginx-conf.sh"
CONNS=${CONNS:-100}
IN_FLIGHT=${IN_FLIGHT:-8}
DURATION=${DURATION:-3s}

command -v valgrind >/dev/null || { echo "valgrind is not installed" >&2; exit 1; }
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
[[ $MODE != nginx || -x $NGINX ]] || { echo "nginx is not installed (tests/bench/run.sh installs it)" >&2; exit 1; }
[[ -x $WSGATE && -x $BENCH ]] || {
    echo "build first: cargo build --release -p wsgate -p wsgate-bench" >&2
    exit 1
}

# TARGET_CPU pins wsgate to that CPU, as tests/bench/run.sh does, so that it runs tokio's
# current-thread runtime (src/main.rs picks it for one CPU) rather than the multi-thread one.
PIN=()
[[ -z ${TARGET_CPU:-} ]] || PIN=(taskset -c "$TARGET_CPU")

WORK=$(mktemp -d /tmp/wsgate-callgrind.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [[ -n ${KEEP:-} ]]; then echo "kept $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

# wait_for FILE REGEX PID: the first line of FILE that matches, once it appears.
wait_for() {
    for _ in $(seq 1200); do
        if grep -m1 -E "$2" "$1" 2>/dev/null; then return 0; fi
        kill -0 "$3" 2>/dev/null || return 1
        sleep 0.05
    done
    return 1
}

"$BENCH" backend --listen 127.0.0.1:0 >"$WORK/backend.out" 2>"$WORK/backend.err" &
BACKEND=$!
PIDS+=("$BACKEND")
UPSTREAM=$(wait_for "$WORK/backend.out" '^127\.0\.0\.1:[0-9]+$' "$BACKEND") || {
    echo "the backend did not start" >&2
    exit 1
}

if [[ $MODE == nginx ]]; then
    # As run.sh's nginx target, but one process (no master) so that callgrind sees the worker.
    PORT=$("$BENCH" freeport)
    nginx_conf "$WORK" off "listen 127.0.0.1:$PORT;" "$UPSTREAM" >"$WORK/nginx.conf"
    "${PIN[@]}" valgrind --tool=callgrind --callgrind-out-file="$WORK/callgrind.out" \
        "$NGINX" -p "$WORK" -c "$WORK/nginx.conf" -e "$WORK/error.log" \
        >"$WORK/nginx.out" 2>"$WORK/nginx.err" &
    GW=$!
    PIDS+=("$GW")
    ADDR=127.0.0.1:$PORT
    for _ in $(seq 600); do
        "$BENCH" probe --url "ws://$ADDR/ws" --timeout 1s >/dev/null 2>&1 && break
        kill -0 "$GW" 2>/dev/null || { echo "nginx did not start under valgrind (see $WORK/nginx.err)" >&2; KEEP=1; exit 1; }
        sleep 0.1
    done
    "$BENCH" probe --url "ws://$ADDR/ws" >/dev/null
else
    {
        echo "listen:"
        echo "  - address: 127.0.0.1:0"
        echo "log_level: info"
        echo "websockets:"
        echo "  max_message_size: 2MiB"
        echo "  receive_buffer_size: 64KiB"
        echo "routes:"
        echo "  - path: /ws"
        echo "    websocket: $MODE"
        [[ $MODE == echo ]] || echo "    upstreams: [http://$UPSTREAM]"
    } >"$WORK/wsgate.yaml"

    "${PIN[@]}" valgrind --tool=callgrind --callgrind-out-file="$WORK/callgrind.out" \
        "$WSGATE" --config "$WORK/wsgate.yaml" >"$WORK/wsgate.out" 2>"$WORK/wsgate.err" &
    GW=$!
    PIDS+=("$GW")
    LINE=$(wait_for "$WORK/wsgate.err" 'listening' "$GW") || {
        echo "wsgate did not start under valgrind (see $WORK/wsgate.err)" >&2
        KEEP=1
        exit 1
    }
    ADDR=$(grep -oE '127\.0\.0\.1:[0-9]+' <<<"$LINE" | head -1)
    "$BENCH" probe --url "ws://$ADDR/ws" >/dev/null
fi

callgrind_control --zero "$GW" >/dev/null 2>&1
OUT=$("$BENCH" load --url "ws://$ADDR/ws" --connections "$CONNS" --size "$SIZE" \
    --in-flight "$IN_FLIGHT" --duration "$DURATION" --warmup 0s)
callgrind_control --dump "$GW" >/dev/null 2>&1
echo "$OUT"

# The dump taken above is the second file (`.1`); the first is written at exit.
python3 - "$WORK/callgrind.out.1" "$OUT" <<'EOF'
import json, re, subprocess, sys

dump, load = sys.argv[1], json.loads(sys.argv[2])
msgs = load["msgs"]
out = subprocess.run(["callgrind_annotate", "--inclusive=yes", dump],
                     capture_output=True, text=True, check=True).stdout
total = None
rows = []
for line in out.splitlines():
    m = re.match(r"\s*([\d,]+) \(\s*[\d.]+%\)\s+(.*)", line)
    if not m:
        continue
    ir, what = int(m.group(1).replace(",", "")), m.group(2)
    if what.startswith("PROGRAM TOTALS"):
        total = ir
    elif re.search(r"wsgate::(ws|proxy)::|\bngx_", what):
        rows.append((ir, what.split(":", 1)[1].split(" [")[0]))
print(f"Ir={total} msgs={msgs} Ir/msg={total / msgs:.0f}")
for ir, what in rows[:8]:
    print(f"  {ir / msgs:8.1f}  {what}")
EOF
