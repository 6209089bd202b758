#!/usr/bin/env bash
# wsgate interop suite: wsgate (cargo build --release) against independent peers it installs
# itself. See tests/interop/README.md.
#
#   tests/interop/run.sh                     everything
#   tests/interop/run.sh --only autobahn     some suites (comma-separated): autobahn python node browser tls
#                                            socketio node-server
#                                            autobahn-client
#   tests/interop/run.sh --update-golden     record the Autobahn behaviors in autobahn-golden.json
#                                            (and autobahn-client-golden.json)
#   tests/interop/run.sh --autobahn-modes echo,passthrough   Autobahn in some modes only
#   tests/interop/run.sh --update-golden --golden-runs 5    record over 5 runs per mode (default 3)
#   tests/interop/run.sh --keep              keep the temp dir (config, certs) for a look afterwards
#
# Peers: Python packages into tests/interop/.venv (requirements.txt), npm packages into
# tests/interop/node_modules (npm ci from package-lock.json), Debian packages (chromium,
# libnss3-tools, fonts-liberation, openssl) with apt-get when missing. Everything listens on
# 127.0.0.1 on ports the OS picks. Artifacts (screenshots, Autobahn reports, logs) go to
# target/interop/. Exits non-zero when anything fails.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
OUT="$ROOT/target/interop"
ALL_SUITES="autobahn autobahn-client python node browser tls socketio node-server"
SUITES="$ALL_SUITES"
UPDATE_GOLDEN=0
KEEP=0
AB_MODES="echo relay passthrough"
GOLDEN_RUNS=3
SMALL_MAX=65536 # max_message_size of the /small route, for the 1009 checks

usage() { sed -n '2,/^[^#]/{/^#/p}' "$0" | sed 's/^# \{0,1\}//'; } # the comment block on top
while [ $# -gt 0 ]; do
  case "$1" in
    --only) SUITES="${2//,/ }"; shift 2 ;;
    --only=*) SUITES="${1#--only=}"; SUITES="${SUITES//,/ }"; shift ;;
    --update-golden) UPDATE_GOLDEN=1; shift ;;
    --golden-runs) GOLDEN_RUNS="$2"; shift 2 ;;
    --autobahn-modes) AB_MODES="${2//,/ }"; shift 2 ;;
    --autobahn-modes=*) AB_MODES="${1#--autobahn-modes=}"; AB_MODES="${AB_MODES//,/ }"; shift ;;
    --keep) KEEP=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "run.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
  esac
done
for s in $SUITES; do
  case " $ALL_SUITES " in *" $s "*) ;; *) echo "run.sh: unknown suite $s (known: $ALL_SUITES)" >&2; exit 2 ;; esac
done
for m in $AB_MODES; do
  case "$m" in echo | relay | passthrough) ;; *) echo "run.sh: unknown Autobahn mode $m" >&2; exit 2 ;; esac
done
want() { case " $SUITES " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

T0=$SECONDS
WORK="$(mktemp -d "${TMPDIR:-/tmp}/wsgate-interop.XXXXXX")"
PIDS=()
cleanup() {
  local rc=$?
  for pid in "${PIDS[@]}"; do
    [ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do
    [ -n "$pid" ] || continue
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  if [ "$KEEP" = 1 ]; then echo "kept $WORK"; else rm -rf "$WORK"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

step() { printf '\n== interop: %s (%ds)\n' "$*" "$((SECONDS - T0))"; }
die() { echo "run.sh: $*" >&2; exit 1; }

# ---------------------------------------------------------------- install peers
step "installing peers"
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else die "need root for: $*"; fi; }

APT=()
command -v openssl >/dev/null || APT+=(openssl)
if want browser; then
  [ -x /usr/bin/chromium ] || APT+=(chromium)
  command -v certutil >/dev/null || APT+=(libnss3-tools)
  [ -d /usr/share/fonts/truetype/liberation ] || APT+=(fonts-liberation)
fi
if [ ${#APT[@]} -gt 0 ]; then
  echo "apt-get install ${APT[*]}"
  export DEBIAN_FRONTEND=noninteractive
  as_root apt-get update -qq
  as_root apt-get install -y -qq --no-install-recommends "${APT[@]}" >"$WORK/apt.log" 2>&1 ||
    { tail -30 "$WORK/apt.log"; die "apt-get install failed"; }
fi

# Python: a venv of its own, rebuilt when requirements.txt changes.
VENV="$HERE/.venv"
PY="$VENV/bin/python"
REQ_SUM="$(sha256sum "$HERE/requirements.txt" | cut -d' ' -f1)"
if [ ! -x "$PY" ] || [ "$(cat "$VENV/.requirements.sha256" 2>/dev/null)" != "$REQ_SUM" ]; then
  echo "python3 -m venv $VENV; pip install -r requirements.txt"
  rm -rf "$VENV"
  if ! python3 -m venv "$VENV"; then # a Debian python3 without its venv module
    rm -rf "$VENV"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
    python3 -m venv "$VENV"
  fi
  "$PY" -m pip install -q --disable-pip-version-check --no-input -r "$HERE/requirements.txt"
  echo "$REQ_SUM" >"$VENV/.requirements.sha256"
fi

# Node: npm ci from the committed lock file, redone when it changes.
if want node || want browser || want socketio || want node-server; then
  LOCK_SUM="$(sha256sum "$HERE/package-lock.json" | cut -d' ' -f1)"
  if [ "$(cat "$HERE/node_modules/.package-lock.sha256" 2>/dev/null)" != "$LOCK_SUM" ]; then
    echo "npm ci"
    (cd "$HERE" && npm ci --no-audit --no-fund --loglevel=error)
    echo "$LOCK_SUM" >"$HERE/node_modules/.package-lock.sha256"
  fi
fi
echo "peers ready: $("$PY" -c 'import importlib.metadata as m; print(", ".join(f"{p} {m.version(p)}" for p in ("kosoku", "websockets", "sslyze")))')"

# ---------------------------------------------------------------- build wsgate
step "cargo build --release"
(cd "$ROOT" && cargo build --release --bin wsgate)
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
case "$TARGET_DIR" in /*) ;; *) TARGET_DIR="$ROOT/$TARGET_DIR" ;; esac
WSGATE="$TARGET_DIR/release/wsgate"

rm -rf "$OUT"
mkdir -p "$OUT"

# ---------------------------------------------------------------- throwaway CA and certificate
step "test CA and certificate (openssl)"
(
  cd "$WORK"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -sha256 \
    -subj "/CN=wsgate interop test CA" -keyout ca.key -out ca.crt \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -sha256 \
    -subj "/CN=localhost" -keyout server.key -out server.csr 2>/dev/null
  printf '%s\n' "subjectAltName=DNS:localhost,IP:127.0.0.1" "basicConstraints=critical,CA:FALSE" \
    "keyUsage=critical,digitalSignature" "extendedKeyUsage=serverAuth" >server.ext
  openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -sha256 \
    -extfile server.ext -out server.crt 2>/dev/null
)
echo "CA $WORK/ca.crt, certificate for localhost and 127.0.0.1"

# ---------------------------------------------------------------- upstream echo server
step "upstream echo server (python websockets)"
"$PY" "$HERE/echo_server.py" --port-file "$WORK/upstream.port" 2>"$OUT/upstream.log" &
PIDS+=($!)
for _ in $(seq 100); do [ -s "$WORK/upstream.port" ] && break; sleep 0.1; done
[ -s "$WORK/upstream.port" ] || { cat "$OUT/upstream.log"; die "the upstream echo server did not start"; }
UP_PORT="$(cat "$WORK/upstream.port")"
echo "upstream ws://127.0.0.1:$UP_PORT"

# ---------------------------------------------------------------- wsgate
step "starting wsgate"
# Both listeners on port 0: the OS picks, and the bound addresses are read back from the
# "listening address=... tls=..." lines wsgate logs.
cat >"$WORK/wsgate.yaml" <<EOF
# Generated by tests/interop/run.sh.
listen:
  - address: 127.0.0.1:0
  - address: 127.0.0.1:0
    tls:
      certificates:
        - { cert: server.crt, key: server.key }
health_path: /healthz
sample_page: /
shutdown_grace: 10s
log_level: info
websockets:
  keep_alive_interval: 0     # no pings of wsgate's own to disturb Autobahn's timing cases
  max_message_size: 16MiB    # Autobahn 9.x sends 16 MiB messages
  close_timeout: 5s
routes:
  - path: /ws                # the sample page's default URL
    websocket: echo
  - path: /echo
    websocket: echo
  - path: /relay
    websocket: relay
    upstreams: ["ws://127.0.0.1:$UP_PORT"]
  - path: /passthrough
    websocket: passthrough
    upstreams: ["http://127.0.0.1:$UP_PORT"]
  - path: /chat
    websocket: echo
    subprotocols: [chat.v1]
  - path: /small
    websocket: echo
    max_message_size: $SMALL_MAX
  - path: /origin
    websocket: echo
    allowed_origins: ["http://allowed.test"]
EOF
cp "$WORK/wsgate.yaml" "$OUT/wsgate.yaml"
"$WSGATE" check --config "$WORK/wsgate.yaml"
: >"$OUT/wsgate.log" # exists before the first read below, whenever the child opens it
"$WSGATE" --config "$WORK/wsgate.yaml" 2>>"$OUT/wsgate.log" &
WSGATE_PID=$!
PIDS+=("$WSGATE_PID")
HTTP_ADDR="" TLS_ADDR=""
for _ in $(seq 100); do
  HTTP_ADDR="$(sed -n 's/.*listening address=\([0-9.:]*\) tls=false.*/\1/p' "$OUT/wsgate.log" | head -1 || true)"
  TLS_ADDR="$(sed -n 's/.*listening address=\([0-9.:]*\) tls=true.*/\1/p' "$OUT/wsgate.log" | head -1 || true)"
  [ -n "$HTTP_ADDR" ] && [ -n "$TLS_ADDR" ] && break
  kill -0 "$WSGATE_PID" 2>/dev/null || break
  sleep 0.1
done
[ -n "$HTTP_ADDR" ] && [ -n "$TLS_ADDR" ] || { cat "$OUT/wsgate.log"; die "wsgate did not report its listeners"; }
TLS_PORT="${TLS_ADDR##*:}"
HTTP_URL="http://$HTTP_ADDR" WS_URL="ws://$HTTP_ADDR"
HTTPS_URL="https://localhost:$TLS_PORT" WSS_URL="wss://localhost:$TLS_PORT"
echo "wsgate $("$WSGATE" --version | tr -d '\n') on $HTTP_URL and $HTTPS_URL (log: target/interop/wsgate.log)"

# ---------------------------------------------------------------- suites
RESULTS=()
PASSED=0 FAILED=0
run_suite() { # name, description, command...
  local name="$1" desc="$2" t=$SECONDS rc=0
  shift 2
  step "$name: $desc"
  "$@" 2>&1 | tee "$OUT/$name.log" || rc=$?
  if [ "$rc" = 0 ]; then
    RESULTS+=("PASS  $name ($((SECONDS - t))s): $desc")
    PASSED=$((PASSED + 1))
  else
    RESULTS+=("FAIL  $name ($((SECONDS - t))s): $desc (exit $rc, log: target/interop/$name.log)")
    FAILED=$((FAILED + 1))
  fi
}

if want autobahn; then
  AB_ARGS=(--out "$OUT/autobahn" --golden "$HERE/autobahn-golden.json")
  [ "$UPDATE_GOLDEN" = 1 ] && AB_ARGS+=(--update-golden --golden-runs "$GOLDEN_RUNS")
  for m in $AB_MODES; do AB_ARGS+=("$m=$WS_URL/$m"); done
  run_suite autobahn "Autobahn|Testsuite 1-10 via kosoku: ${AB_MODES// /, }" \
    "$PY" "$HERE/autobahn.py" "${AB_ARGS[@]}"
fi

# The relay's client side: kosoku's fuzzingserver as the upstream of a wsgate of its own.
if want autobahn-client; then
  ABC_ARGS=(--wsgate "$WSGATE" --out "$OUT/autobahn-client" --golden "$HERE/autobahn-client-golden.json")
  [ "$UPDATE_GOLDEN" = 1 ] && ABC_ARGS+=(--update-golden --golden-runs "$GOLDEN_RUNS")
  run_suite autobahn-client "Autobahn|Testsuite 1-10 fuzzingserver (kosoku) as the relay's upstream" \
    "$PY" "$HERE/autobahn_client.py" "${ABC_ARGS[@]}"
fi

if want python; then
  run_suite python "Python websockets client" \
    "$PY" "$HERE/py_client.py" --ws "$WS_URL" --wss "$WSS_URL" --ca "$WORK/ca.crt" --small-max "$SMALL_MAX"
fi

if want node; then
  run_suite node "Node ws client" \
    node "$HERE/ws_client.mjs" --ws "$WS_URL" --wss "$WSS_URL" --ca "$WORK/ca.crt" --small-max "$SMALL_MAX"
fi

if want browser; then
  # Trust the test CA the way a user would: in the NSS database Chromium reads under $HOME.
  BROWSER_HOME="$WORK/browser-home"
  mkdir -p "$BROWSER_HOME/.pki/nssdb"
  TRUST=()
  if certutil -N -d "sql:$BROWSER_HOME/.pki/nssdb" --empty-password &&
    certutil -A -d "sql:$BROWSER_HOME/.pki/nssdb" -n "wsgate interop test CA" -t "C,," -i "$WORK/ca.crt"; then
    TRUST=(--trusted)
  else
    echo "certutil failed: the browser will ignore certificate errors instead"
  fi
  run_suite browser "headless Chromium on the sample page (http, https, origin policy)" \
    env HOME="$BROWSER_HOME" node "$HERE/browser.mjs" --http "$HTTP_URL" --https "$HTTPS_URL" \
    --out "$OUT" --log "$OUT/wsgate.log" "${TRUST[@]}"
fi

if want tls; then
  run_suite tls "sslyze scan of the TLS listener, ALPN" \
    "$PY" "$HERE/tls_scan.py" --port "$TLS_PORT" --ca "$WORK/ca.crt" --out "$OUT/tls-scan.json"
fi

# socketio and node-server run wsgate processes of their own (the socketio suite restarts its
# wsgate; node-server kills upstreams) next to the shared one, which they leave alone.
if want socketio; then
  run_suite socketio "socket.io 4 (two instances, balance: cookie) behind passthrough, socket.io-client 4" \
    node "$HERE/socketio.mjs" --wsgate "$WSGATE" --out "$OUT"
fi

if want node-server; then
  run_suite node-server "Node ws server as the upstream of relay and passthrough, Node ws client" \
    node "$HERE/node_server.mjs" --wsgate "$WSGATE" --out "$OUT"
fi

# ---------------------------------------------------------------- wsgate itself
step "wsgate: still running, then SIGTERM"
t=$SECONDS
if ! kill -0 "$WSGATE_PID" 2>/dev/null; then
  RESULTS+=("FAIL  wsgate: the process died during the run (log: target/interop/wsgate.log)")
  FAILED=$((FAILED + 1))
else
  kill -TERM "$WSGATE_PID"
  rc=0
  wait "$WSGATE_PID" || rc=$?
  LEFT=()
  for pid in "${PIDS[@]}"; do [ "$pid" = "$WSGATE_PID" ] || LEFT+=("$pid"); done
  PIDS=("${LEFT[@]}") # wsgate is reaped: nothing left for cleanup to signal
  if [ "$rc" = 0 ]; then
    RESULTS+=("PASS  shutdown ($((SECONDS - t))s): wsgate alive after every suite, exited 0 on SIGTERM")
    PASSED=$((PASSED + 1))
  else
    RESULTS+=("FAIL  shutdown: wsgate exited $rc on SIGTERM")
    FAILED=$((FAILED + 1))
  fi
fi
if grep -qiE 'panicked|thread .* panicked' "$OUT/wsgate.log"; then
  RESULTS+=("FAIL  wsgate log: a panic (target/interop/wsgate.log)")
  FAILED=$((FAILED + 1))
fi

step "summary"
for r in "${RESULTS[@]}"; do echo "$r"; done
if want autobahn && [ -f "$OUT/autobahn.log" ]; then grep '^autobahn ' "$OUT/autobahn.log" || true; fi
if want autobahn-client && [ -f "$OUT/autobahn-client.log" ]; then grep '^autobahn-client ' "$OUT/autobahn-client.log" || true; fi
echo "artifacts: target/interop/ (page-*.png, autobahn/<mode>/index.json, autobahn-client/relay/index.json, *.log); total $((SECONDS - T0))s"
echo "interop: $PASSED passed, $FAILED failed"
[ "$FAILED" = 0 ]
