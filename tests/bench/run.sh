#!/usr/bin/env bash
# wsgate side by side with a bare backend, nginx and HAProxy: the one command that reproduces
# the figures. See tests/bench/README.md.
#
#   tests/bench/run.sh            full run (ROUNDS=5, DURATION=5s: about 40 minutes)
#   TLS=0 tests/bench/run.sh      the same without the wss:// targets (about 25 minutes)
#   QUICK=1 tests/bench/run.sh    one round of 1 s at two sizes (harness check, not figures)
#   tests/bench/run.sh --smoke    direct and wsgate echo, plain and TLS, 1 KiB, no apt-get (CI)
#
# Output: target/bench/report.md, target/bench/throughput.svg (and throughput-tls.svg),
# target/bench/results.jsonl,
# target/bench/logs/ (configs and logs of every program it started).
#
# Every program listens on 127.0.0.1 on a port chosen at run time, and all traffic goes to
# 127.0.0.1/127.0.0.x. Everything started here is stopped on exit (trap), by PID.

set -euo pipefail

MODE=full
case "${1:-}" in
    --smoke) MODE=smoke ;;
    "") ;;
    -h | --help)
        sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'
        exit 0
        ;;
    *)
        echo "usage: $0 [--smoke]" >&2
        exit 2
        ;;
esac

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# shellcheck source=tests/bench/nginx-conf.sh
source "$ROOT/tests/bench/nginx-conf.sh"
cd "$ROOT"

ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-5s}
WARMUP=${WARMUP:-1s}
SIZES=${SIZES:-"20 1KiB 16KiB 1MiB"}
CONNS=${CONNS:-100}
CONNS_1MIB=${CONNS_1MIB:-10}
IDLE_CONNS=${IDLE_CONNS:-5000}
LAT_ROUNDS=${LAT_ROUNDS:-5}
LAT1_RATE=${LAT1_RATE:-1000}
LAT_RATE=${LAT_RATE:-20000}
LAT_CONNS=${LAT_CONNS:-10}
# How long before each message the latency sender stops sleeping and polls (see latency.rs).
LAT_SPIN=${LAT_SPIN:-1ms}
# wss:// targets (throughput only): the client's TLS ends at the target, which forwards plain
# ws:// to the same backend, as a TLS-terminating gateway is deployed.
TLS=${TLS:-1}
# What the wsgate configs set (recorded in the report): 2 MiB so 1 MiB messages fit; 64 KiB for the
# read that waits for a message (nginx-64k and haproxy-64k get the same buffer size).
WSGATE_MAX_MESSAGE=${WSGATE_MAX_MESSAGE:-2MiB}
WSGATE_RECEIVE_BUFFER=${WSGATE_RECEIVE_BUFFER:-64KiB}
if [[ ${QUICK:-0} == 1 ]]; then
    ROUNDS=1 DURATION=1s WARMUP=0.5s SIZES="1KiB 1MiB" LAT_ROUNDS=1
fi
if [[ $MODE == smoke ]]; then
    DURATION=1.5s WARMUP=0.5s
fi

OUT=$ROOT/target/bench
mkdir -p "$OUT"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/wsgate-bench.XXXXXX")
RESULTS=$OUT/results.jsonl
[[ $MODE == smoke ]] && RESULTS=$OUT/smoke.jsonl
: >"$RESULTS"

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

# ---------------------------------------------------------------------------------------------
# Cleanup: every process started here is recorded and stopped by PID.
STARTED=()
POLICY_RC_CREATED=0
cleanup() {
    local rc=$? pid i
    trap - EXIT INT TERM
    for ((i = ${#STARTED[@]} - 1; i >= 0; i--)); do
        pid=${STARTED[i]}
        kill -TERM "$pid" 2>/dev/null || true
    done
    for _ in $(seq 50); do
        local alive=0
        for pid in "${STARTED[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        ((alive)) || break
        sleep 0.1
    done
    for pid in "${STARTED[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if ((POLICY_RC_CREATED)); then rm -f /usr/sbin/policy-rc.d; fi
    rm -rf "$OUT/logs"
    cp -r "$WORK" "$OUT/logs" 2>/dev/null || true
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

stop_pid() {
    local pid=$1
    kill -TERM "$pid" 2>/dev/null || return 0
    for _ in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.05
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

# ---------------------------------------------------------------------------------------------
# CPUs: the target under test on CPU 0, the load generator on CPU 1. For throughput, the echo
# backend behind the proxies shares CPU 1 with the load generator (a 2-core machine has no third
# CPU for it), so a proxy's CPU is its own. For latency it moves to the target's CPU
# (LAT_BACKEND_CPU): direct's backend is there too, so the load generator's CPU carries the same
# work for every target and "proxied − direct" differs by the proxy alone, not by a backend that
# also competes with the generator's clock for CPU 1.
NCPU=$(nproc)
if ((NCPU >= 2)); then
    TARGET_CPU=${TARGET_CPU:-0} LOAD_CPU=${LOAD_CPU:-1} BACKEND_CPU=${BACKEND_CPU:-1}
    LAT_BACKEND_CPU=${LAT_BACKEND_CPU:-$TARGET_CPU}
else
    log "warning: only $NCPU CPU: no pinning apart, figures mean little"
    TARGET_CPU=0 LOAD_CPU=0 BACKEND_CPU=0 LAT_BACKEND_CPU=0
fi

# Open files: 5,000 idle connections through a proxy are 10,000 sockets in it.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# ---------------------------------------------------------------------------------------------
log "building wsgate and wsgate-bench (release)"
cargo build --release --quiet -p wsgate -p wsgate-bench || die "release build failed"
BIN_DIR=${CARGO_TARGET_DIR:-$ROOT/target}/release
WSGATE=$BIN_DIR/wsgate
BENCH=$BIN_DIR/wsgate-bench
# The wss:// targets' certificate, signed by a CA made for this run (the load generator trusts
# only that CA).
CERTS=$WORK/certs
"$BENCH" certs --out "$CERTS" || die "could not write the TLS certificates"

# ---------------------------------------------------------------------------------------------
# Targets. For each: URL, PIDs whose CPU is the target's, PIDs whose RSS is measured, whether it
# works (AVAIL=1) or why not.
declare -A URL CPU_PIDS RSS_PIDS AVAIL WHY AUX_PIDS
# cpu1-only is no proxy: the load generator talks straight to a backend on its own CPU 1. It is
# what CPU 1 carries with nothing in between, so a proxied target that runs near it is held back
# by CPU 1 (load generator + backend), not by itself.
ALL_TARGETS=(direct cpu1-only wsgate-echo wsgate-relay wsgate-passthrough nginx nginx-64k haproxy haproxy-64k)
# Over TLS, the proxies the checks compare with: nginx with default buffers (20 B, 1 KiB) and
# HAProxy with 64 KiB buffers (16 KiB, 1 MiB).
TLS_TARGETS=(direct+tls wsgate-echo+tls wsgate-relay+tls wsgate-passthrough+tls nginx+tls haproxy-64k+tls)
((TLS)) && ALL_TARGETS+=("${TLS_TARGETS[@]}")
for t in "${ALL_TARGETS[@]}"; do AVAIL[$t]=0 WHY[$t]="not started"; done

# wait_line FILE REGEX SECONDS PID: prints the first line of FILE matching REGEX.
wait_line() {
    local file=$1 re=$2 secs=$3 pid=$4 line
    for _ in $(seq $((secs * 20))); do
        line=$(grep -m1 -E "$re" "$file" 2>/dev/null || true)
        if [[ -n $line ]]; then
            printf '%s\n' "$line"
            return 0
        fi
        kill -0 "$pid" 2>/dev/null || return 1
        sleep 0.05
    done
    return 1
}

children_of() { pgrep -P "$1" | tr '\n' ' '; }

# start_backend NAME CPU [tls]: sets REPLY to its address and LAST_PID.
start_backend() {
    local name=$1 cpu=$2 tls=()
    [[ ${3:-} == tls ]] && tls=(--tls-cert "$CERTS/server.crt" --tls-key "$CERTS/server.key")
    taskset -c "$cpu" "$BENCH" backend --listen 127.0.0.1:0 "${tls[@]}" \
        >"$WORK/$name.out" 2>"$WORK/$name.err" &
    LAST_PID=$!
    STARTED+=("$LAST_PID")
    REPLY=$(wait_line "$WORK/$name.out" '^127\.0\.0\.1:[0-9]+$' 10 "$LAST_PID") ||
        die "$name did not start (see $WORK/$name.err)"
}

# start_wsgate NAME MODE UPSTREAM_ADDR|"" [tls]: one wsgate process per mode, route /ws.
start_wsgate() {
    local name=$1 mode=$2 upstream=${3:-} tls=${4:-} cfg=$WORK/$1.yaml line
    {
        echo "# wsgate-bench: $mode${tls:+ over TLS}"
        echo "listen:"
        echo "  - address: 127.0.0.1:0"
        if [[ $tls == tls ]]; then
            echo "    tls:"
            echo "      certificates:"
            echo "        - { cert: $CERTS/server.crt, key: $CERTS/server.key }"
        fi
        echo "log_level: info"
        echo "shutdown_grace: 2s"
        echo "websockets:"
        echo "  max_message_size: $WSGATE_MAX_MESSAGE"
        echo "  receive_buffer_size: $WSGATE_RECEIVE_BUFFER"
        echo "routes:"
        echo "  - path: /ws"
        echo "    websocket: $mode"
        if [[ -n $upstream ]]; then
            echo "    upstreams: [http://$upstream]"
        fi
    } >"$cfg"
    "$WSGATE" check --config "$cfg" >"$WORK/$name.check" 2>&1 ||
        die "wsgate rejected $cfg: $(cat "$WORK/$name.check")"
    taskset -c "$TARGET_CPU" "$WSGATE" --config "$cfg" >"$WORK/$name.out" 2>"$WORK/$name.err" &
    LAST_PID=$!
    STARTED+=("$LAST_PID")
    line=$(wait_line "$WORK/$name.err" 'listening' 10 "$LAST_PID") ||
        die "$name did not start (see $WORK/$name.err)"
    REPLY=$(grep -oE '127\.0\.0\.1:[0-9]+' <<<"$line" | head -1)
    [[ -n $REPLY ]] || die "no address in wsgate's 'listening' line: $line"
}

NGINX=""
HAPROXY=""
find_proxies() {
    NGINX=$(command -v nginx || { [[ -x /usr/sbin/nginx ]] && echo /usr/sbin/nginx; } || true)
    HAPROXY=$(command -v haproxy || { [[ -x /usr/sbin/haproxy ]] && echo /usr/sbin/haproxy; } || true)
}

install_proxies() {
    find_proxies
    [[ -n $NGINX && -n $HAPROXY ]] && return 0
    if [[ $(id -u) != 0 ]]; then
        log "nginx/haproxy missing and not root: those targets will be 'not available'"
        return 0
    fi
    log "installing nginx and haproxy (apt-get)"
    # Debian's postinst would start the system services on port 80; policy-rc.d forbids it.
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
        POLICY_RC_CREATED=1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >"$WORK/apt.log" 2>&1 || log "apt-get update failed (see logs/apt.log)"
    apt-get install -y -qq --no-install-recommends nginx haproxy >>"$WORK/apt.log" 2>&1 ||
        log "apt-get install failed (see logs/apt.log)"
    if ((POLICY_RC_CREATED)); then
        rm -f /usr/sbin/policy-rc.d
        POLICY_RC_CREATED=0
    fi
    find_proxies
}

# start_nginx NAME BACKEND_ADDR default|64k [tls]
start_nginx() {
    local name=$1 backend=$2 bufs=$3 tls=${4:-} dir=$WORK/$1 port
    port=$("$BENCH" freeport)
    mkdir -p "$dir"
    local buffers=""
    if [[ $bufs == 64k ]]; then
        # proxy_buffer_size is the buffer of each direction of an upgraded connection.
        buffers="proxy_buffer_size 64k; proxy_buffers 8 64k; proxy_busy_buffers_size 128k;"
    fi
    local listen="listen 127.0.0.1:$port;"
    if [[ $tls == tls ]]; then
        # ssl_protocols: nginx before 1.23.4 leaves TLS 1.3 out of its default list.
        listen="listen 127.0.0.1:$port ssl; ssl_protocols TLSv1.2 TLSv1.3; ssl_certificate $CERTS/server.crt; ssl_certificate_key $CERTS/server.key;"
    fi
    {
        echo "# wsgate-bench: nginx, 1 worker, $bufs buffers${tls:+, TLS}"
        nginx_conf "$dir" on "$listen" "$backend" "$buffers"
    } >"$dir/nginx.conf"
    "$NGINX" -t -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" >"$dir/check.log" 2>&1 ||
        die "nginx rejected its config: $(cat "$dir/check.log")"
    taskset -c "$TARGET_CPU" "$NGINX" -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" \
        >"$dir/out.log" 2>&1 &
    LAST_PID=$!
    STARTED+=("$LAST_PID")
    REPLY=127.0.0.1:$port
}

# start_haproxy NAME BACKEND_ADDR default|64k [tls]
start_haproxy() {
    local name=$1 backend=$2 bufs=$3 tls=${4:-} dir=$WORK/$1 port
    port=$("$BENCH" freeport)
    mkdir -p "$dir"
    local tune=""
    [[ $bufs == 64k ]] && tune="    tune.bufsize 65536"
    local ssl=""
    [[ $tls == tls ]] && ssl=" ssl crt $CERTS/server.pem"
    cat >"$dir/haproxy.cfg" <<EOF
# wsgate-bench: haproxy, 1 thread, $bufs buffers${tls:+, TLS}
global
    nbthread 1
    maxconn 8000
$tune

defaults
    mode http
    timeout connect 5s
    timeout client 1h
    timeout server 1h
    timeout tunnel 1h

frontend fe
    bind 127.0.0.1:$port$ssl
    default_backend be

backend be
    server app $backend
EOF
    "$HAPROXY" -c -f "$dir/haproxy.cfg" >"$dir/check.log" 2>&1 ||
        die "haproxy rejected its config: $(cat "$dir/check.log")"
    taskset -c "$TARGET_CPU" "$HAPROXY" -db -f "$dir/haproxy.cfg" >"$dir/out.log" 2>&1 &
    LAST_PID=$!
    STARTED+=("$LAST_PID")
    REPLY=127.0.0.1:$port
}

# probe TARGET: waits until it answers; AVAIL=1, or 0 with WHY (e.g. wsgate's 501 for a mode
# not implemented yet, which is reported as "not available" rather than failing the run).
probe() {
    local t=$1 out=""
    for _ in $(seq 50); do
        out=$("$BENCH" probe --url "${URL[$t]}" --ca "$CERTS/ca.crt" --timeout 2s 2>/dev/null) && {
            AVAIL[$t]=1 WHY[$t]=""
            return 0
        }
        if [[ $out == *"upgrade refused"* ]]; then break; fi
        sleep 0.2
    done
    AVAIL[$t]=0
    WHY[$t]=${out:-no answer}
    log "$t: not available: ${WHY[$t]}"
}

# start_target TARGET PREFIX: starts a fresh instance; sets URL, CPU_PIDS, RSS_PIDS, AUX_PIDS.
# A "+tls" target is its plain namesake serving wss:// with the run's certificate.
start_target() {
    local t=$1 name=$2$1 pid base=${1%+tls} tls="" scheme=ws
    [[ $t == *+tls ]] && tls=tls scheme=wss
    case $base in
    direct)
        start_backend "$name" "$TARGET_CPU" $tls
        pid=$LAST_PID
        ;;
    cpu1-only)
        start_backend "$name" "$LOAD_CPU"
        pid=$LAST_PID
        ;;
    wsgate-echo) start_wsgate "$name" echo "" $tls && pid=$LAST_PID ;;
    wsgate-relay) start_wsgate "$name" relay "$UPSTREAM" $tls && pid=$LAST_PID ;;
    wsgate-passthrough) start_wsgate "$name" passthrough "$UPSTREAM" $tls && pid=$LAST_PID ;;
    nginx | nginx-64k | haproxy | haproxy-64k)
        local bufs=default
        [[ $base == *-64k ]] && bufs=64k
        if [[ $base == nginx* ]]; then
            [[ -n $NGINX ]] || {
                WHY[$t]="nginx is not installed"
                return 0
            }
            start_nginx "$name" "$UPSTREAM" "$bufs" $tls
        else
            [[ -n $HAPROXY ]] || {
                WHY[$t]="haproxy is not installed"
                return 0
            }
            start_haproxy "$name" "$UPSTREAM" "$bufs" $tls
        fi
        pid=$LAST_PID
        ;;
    esac
    URL[$t]="$scheme://$REPLY/ws"
    probe "$t"
    CPU_PIDS[$t]=$pid
    RSS_PIDS[$t]=$pid
    AUX_PIDS[$t]=""
    [[ $base == direct || $base == cpu1-only || $base == wsgate-echo ]] || AUX_PIDS[$t]=$UPSTREAM_PID
    if [[ $t == nginx* && ${AVAIL[$t]} == 1 ]]; then
        # The master forks the worker; both count (the master is idle).
        CPU_PIDS[$t]="$pid $(children_of "$pid")"
        RSS_PIDS[$t]=${CPU_PIDS[$t]}
    fi
    TARGET_PID[$t]=$pid
}
declare -A TARGET_PID

record() { # PHASE TARGET SIZE ROUND JSON-or-empty ERRFILE
    local phase=$1 t=$2 size=$3 round=$4 json=$5 errfile=$6
    if [[ $json == "{"* ]]; then
        printf '{"phase":"%s","target":"%s","size":"%s","round":%s,"result":%s}\n' \
            "$phase" "$t" "$size" "$round" "$json" >>"$RESULTS"
    else
        local err
        err=$(tail -n 3 "$errfile" 2>/dev/null | tr -d '"\\' | tr '\n\t' '  ')
        printf '{"phase":"%s","target":"%s","size":"%s","round":%s,"error":"%s"}\n' \
            "$phase" "$t" "$size" "$round" "${err:-failed}" >>"$RESULTS"
        log "$phase $t $size round $round failed: ${err:-?}"
    fi
}

pid_args() { # FLAG PIDS...
    local flag=$1 p
    shift
    for p in "$@"; do printf '%s\n%s\n' "$flag" "$p"; done
}

run_load() { # TARGET SIZE ROUND
    local t=$1 size=$2 round=$3 conns=$CONNS k out
    case $size in
    20 | 1KiB) k=8 ;;
    16KiB) k=4 ;;
    *) k=2 ;;
    esac
    [[ $size == 1MiB ]] && conns=$CONNS_1MIB
    k=${IN_FLIGHT:-$k}
    local -a extra
    mapfile -t extra < <(pid_args --cpu-pid ${CPU_PIDS[$t]}; pid_args --aux-cpu-pid ${AUX_PIDS[$t]})
    out=$(taskset -c "$LOAD_CPU" "$BENCH" load --url "${URL[$t]}" --ca "$CERTS/ca.crt" --connections "$conns" \
        --size "$size" --in-flight "$k" --duration "$DURATION" --warmup "$WARMUP" \
        --label "$t" "${extra[@]}" 2>"$WORK/last.err") || true
    record throughput "$t" "$size" "$round" "$out" "$WORK/last.err"
    [[ $out == "{"* ]] && log "$(printf '%-19s %6s  %s' "$t" "$size" "$(summary "$out")")"
    return 0
}

summary() {
    python3 -c 'import json,sys; r=json.loads(sys.argv[1]); print("%.0f msgs/s  %.1f MiB/s  target cpu %s" % (r["msgs_per_s"], r["mib_per_s"], ("%.0f%%" % (100*r["target_cpu_util"])) if "target_cpu_util" in r else "-"))' "$1"
}

run_latency() { # TARGET SCENARIO ROUND CONNS RATE SIZE
    local t=$1 sc=$2 round=$3 conns=$4 rate=$5 size=$6 out
    local -a extra
    mapfile -t extra < <(pid_args --cpu-pid ${CPU_PIDS[$t]}; pid_args --aux-cpu-pid ${AUX_PIDS[$t]})
    out=$(taskset -c "$LOAD_CPU" "$BENCH" latency --url "${URL[$t]}" --ca "$CERTS/ca.crt" --connections "$conns" \
        --rate "$rate" --size "$size" --spin "$LAT_SPIN" --duration "$DURATION" --warmup "$WARMUP" \
        --label "$t" "${extra[@]}" 2>"$WORK/last.err") || true
    record "$sc" "$t" "$size" "$round" "$out" "$WORK/last.err"
    [[ $out == "{"* ]] && log "$(printf '%-19s %-10s %s' "$t" "$sc" "$(python3 -c 'import json,sys; r=json.loads(sys.argv[1]); print("p50 %.1f us  p99 %.1f us  p99.9 %.1f us" % (r["p50_us"], r["p99_us"], r["p999_us"]))' "$out")")"
    return 0
}

rotate() { # N ITEMS...: the items rotated left by N
    local n=$1
    shift
    local -a a=("$@")
    local len=${#a[@]} i
    for ((i = 0; i < len; i++)); do echo "${a[$(((i + n) % len))]}"; done
}

write_meta() {
    {
        echo "mode=$MODE"
        echo "quick=${QUICK:-0}"
        echo "date=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
        echo "nproc=$NCPU"
        echo "loadavg=$(cut -d' ' -f1-3 /proc/loadavg)"
        echo "cpu_model=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
        echo "kernel=$(uname -srm)"
        echo "memory=$(grep -m1 MemTotal /proc/meminfo | awk '{printf "%.1f GiB", $2/1048576}')"
        echo "rustc=$(rustc --version 2>/dev/null)"
        echo "commit=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null)$(git -C "$ROOT" diff --quiet HEAD 2>/dev/null || echo ' (with local changes)')"
        echo "nginx=$([[ -n $NGINX ]] && "$NGINX" -v 2>&1 | sed 's/^nginx version: //')"
        echo "haproxy=$([[ -n $HAPROXY ]] && "$HAPROXY" -v 2>&1 | head -1)"
        echo "rounds=$ROUNDS"
        echo "duration=$DURATION"
        echo "warmup=$WARMUP"
        echo "sizes=$SIZES"
        echo "conns=$CONNS"
        echo "conns_1mib=$CONNS_1MIB"
        echo "in_flight=${IN_FLIGHT:-8 (20 B, 1 KiB), 4 (16 KiB), 2 (1 MiB)}"
        echo "idle_conns=$IDLE_CONNS"
        echo "lat1_rate=$LAT1_RATE"
        echo "lat_rate=$LAT_RATE"
        echo "lat_conns=$LAT_CONNS"
        echo "lat_rounds=$LAT_ROUNDS"
        echo "lat_spin=$LAT_SPIN"
        echo "target_cpu=$TARGET_CPU"
        echo "load_cpu=$LOAD_CPU"
        echo "backend_cpu=$BACKEND_CPU"
        echo "lat_backend_cpu=$LAT_BACKEND_CPU"
        echo "wsgate_max_message_size=$WSGATE_MAX_MESSAGE"
        echo "wsgate_receive_buffer_size=$WSGATE_RECEIVE_BUFFER"
        echo "wsgate_threads=${WSGATE_THREADS:-?}"
        echo "tls=$TLS"
        for t in "${ALL_TARGETS[@]}"; do
            if [[ ${AVAIL[$t]} == 1 ]]; then echo "avail.$t=yes"; else echo "avail.$t=${WHY[$t]}"; fi
        done
    } >"$OUT/meta.env"
}

# ---------------------------------------------------------------------------------------------
if [[ $MODE == smoke ]]; then
    rc=0
    SMOKE_TARGETS=(direct wsgate-echo direct+tls wsgate-echo+tls)
    for t in "${SMOKE_TARGETS[@]}"; do start_target "$t" ""; done
    for t in "${SMOKE_TARGETS[@]}"; do
        if [[ ${AVAIL[$t]} != 1 ]]; then
            log "FAIL $t: ${WHY[$t]}"
            rc=1
            continue
        fi
        run_load "$t" 1KiB 1
        rate=$(python3 -c 'import json,sys
for l in open(sys.argv[1]):
    r = json.loads(l)
    if r["target"] == sys.argv[2] and "result" in r: print(r["result"]["msgs_per_s"])' "$RESULTS" "$t")
        if python3 -c 'import sys; sys.exit(0 if float(sys.argv[1] or 0) > 0 else 1)' "${rate:-0}"; then
            log "ok   $t: ${rate%.*} msgs/s at 1 KiB"
        else
            log "FAIL $t: no throughput"
            rc=1
        fi
    done
    ((rc == 0)) && log "smoke: passed (figures of a smoke run mean nothing)"
    exit "$rc"
fi

install_proxies
log "starting the upstream backend (CPU $BACKEND_CPU) and the targets (CPU $TARGET_CPU)"
start_backend upstream "$BACKEND_CPU"
UPSTREAM=$REPLY UPSTREAM_PID=$LAST_PID
for t in "${ALL_TARGETS[@]}"; do start_target "$t" ""; done
WSGATE_THREADS=$(ls "/proc/${TARGET_PID[wsgate-echo]}/task" 2>/dev/null | wc -l)
write_meta

AVAILABLE=()
for t in "${ALL_TARGETS[@]}"; do [[ ${AVAIL[$t]} == 1 ]] && AVAILABLE+=("$t"); done
log "available: ${AVAILABLE[*]}"

# Throughput: rounds outermost, so every target is measured once per round (A B A B ...); the
# order within a round rotates so no target always runs first or right after another.
for ((r = 1; r <= ROUNDS; r++)); do
    log "throughput round $r of $ROUNDS"
    for size in $SIZES; do
        mapfile -t order < <(rotate $((r - 1)) "${AVAILABLE[@]}")
        for t in "${order[@]}"; do run_load "$t" "$size" "$r"; done
    done
done

# Latency: one connection, 20 B, at a low rate (unloaded latency: what a hop adds), then
# LAT_RATE msgs/s of 1 KiB over LAT_CONNS connections (latency under load).
LAT_TARGETS=()
for t in direct wsgate-echo wsgate-relay wsgate-passthrough nginx haproxy; do
    [[ ${AVAIL[$t]} == 1 ]] && LAT_TARGETS+=("$t")
done
# The backend behind the proxies joins direct's on LAT_BACKEND_CPU (see CPUs above); -a moves
# every thread of it.
taskset -a -p -c "$LAT_BACKEND_CPU" "$UPSTREAM_PID" >/dev/null || die "could not move the backend"
for ((r = 1; r <= LAT_ROUNDS; r++)); do
    log "latency round $r of $LAT_ROUNDS"
    mapfile -t order < <(rotate $((r - 1)) "${LAT_TARGETS[@]}")
    for t in "${order[@]}"; do run_latency "$t" latency-1conn "$r" 1 "$LAT1_RATE" 20; done
    for t in "${order[@]}"; do run_latency "$t" latency-load "$r" "$LAT_CONNS" "$LAT_RATE" 1KiB; done
done
taskset -a -p -c "$BACKEND_CPU" "$UPSTREAM_PID" >/dev/null || die "could not move the backend"

# Idle memory: a fresh process per target, so memory freed by the throughput runs and kept by the
# allocator does not hide what the idle connections cost.
log "idle memory: $IDLE_CONNS connections per target"
for t in "${ALL_TARGETS[@]}"; do
    [[ ${AVAIL[$t]} == 1 ]] && stop_pid "${TARGET_PID[$t]}"
done
for t in direct wsgate-echo wsgate-relay wsgate-passthrough nginx haproxy; do
    [[ ${AVAIL[$t]} == 1 ]] || continue
    start_target "$t" idle-
    [[ ${AVAIL[$t]} == 1 ]] || continue
    sleep 1
    mapfile -t pids < <(pid_args --pid ${RSS_PIDS[$t]})
    out=$(taskset -c "$LOAD_CPU" "$BENCH" idle --url "${URL[$t]}" --ca "$CERTS/ca.crt" --connections "$IDLE_CONNS" \
        "${pids[@]}" --label "$t" 2>"$WORK/last.err") || true
    record idle "$t" "-" 1 "$out" "$WORK/last.err"
    [[ $out == "{"* ]] && log "$(printf '%-19s idle %s' "$t" "$(python3 -c 'import json,sys; r=json.loads(sys.argv[1]); print("%d open, %.2f KiB/connection" % (r["opened"], r["kib_per_conn"]))' "$out")")"
    stop_pid "${TARGET_PID[$t]}"
    sleep 1
done

python3 "$ROOT/tests/bench/report.py" --results "$RESULTS" --meta "$OUT/meta.env" --out "$OUT"
log "report: $OUT/report.md, charts: $OUT/throughput.svg$( ((TLS)) && echo " $OUT/throughput-tls.svg")"
