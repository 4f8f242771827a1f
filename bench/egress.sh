#!/usr/bin/env bash
# Egress path benchmark: 1 GiB download throughput and connection-setup latency (p50/p99)
# through (1) direct loopback, (2) Bulwark's forwarder + egress proxy
# (runner/examples/egress_bench.rs, benchmark-only host of both), and (3) the baseline chain
# socat (TCP -> unix socket) -> socat (unix -> TCP) -> tinyproxy.
# Usage: bench/egress.sh [latency-samples]   (installs socat and tinyproxy with apt if missing)
# Results go to stdout; copy them into docs/benchmarks.md with the host description.
set -euo pipefail
cd "$(dirname "$0")/.."
SAMPLES=${1:-200}
for tool in socat tinyproxy curl python3; do
  command -v "$tool" >/dev/null || apt-get install -y "$tool" >/dev/null
done
cargo build --release --example egress_bench -q
BIN=target/release/examples/egress_bench
WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }

# Origin: /big is 1 GiB, /small is 2 bytes; HTTP/1.1, one request per connection.
ORIGIN=$(free_port)
cat >"$WORK/origin.py" <<'PY'
import http.server, sys
BLOCK = b"\xa5" * (1 << 20)
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def do_GET(self):
        big = self.path.startswith("/big")
        self.send_response(200)
        self.send_header("Content-Length", str(1024 * len(BLOCK) if big else 2))
        self.send_header("Connection", "close")
        self.end_headers()
        if big:
            for _ in range(1024): self.wfile.write(BLOCK)
        else:
            self.wfile.write(b"ok")
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
PY
python3 "$WORK/origin.py" "$ORIGIN" & PIDS+=($!)

# Bulwark: forwarder + proxy.
mkfifo "$WORK/hold"
"$BIN" "$ORIGIN" "$WORK" <"$WORK/hold" >"$WORK/bulwark.out" & PIDS+=($!)
exec 3>"$WORK/hold"
for _ in $(seq 50); do grep -q FORWARDER_PORT "$WORK/bulwark.out" 2>/dev/null && break; sleep 0.1; done
FWD=$(sed -n 's/FORWARDER_PORT=//p' "$WORK/bulwark.out")

# Baseline chain: socat TCP->unix, socat unix->TCP, tinyproxy.
TP=$(free_port); CHAIN=$(free_port)
cat >"$WORK/tinyproxy.conf" <<CONF
Port $TP
Listen 127.0.0.1
Timeout 600
MaxClients 256
Allow 127.0.0.1
User nobody
Group nogroup
LogLevel Critical
CONF
tinyproxy -d -c "$WORK/tinyproxy.conf" & PIDS+=($!)
socat UNIX-LISTEN:"$WORK/chain.sock",fork TCP:127.0.0.1:"$TP" & PIDS+=($!)
socat TCP-LISTEN:"$CHAIN",bind=127.0.0.1,fork,reuseaddr UNIX-CONNECT:"$WORK/chain.sock" & PIDS+=($!)
sleep 1

# name, proxy option, host (bench.test is mapped to 127.0.0.1 by the proxy's egress.hosts)
run() {
  local name=$1 proxy=$2 host=$3
  local args=(-s -o /dev/null --max-time 300)
  [ -n "$proxy" ] && args+=(--proxy "$proxy")
  local speed
  speed=$(curl "${args[@]}" -w '%{speed_download}' "http://$host:$ORIGIN/big")
  local lat
  lat=$(for _ in $(seq "$SAMPLES"); do
          curl "${args[@]}" -w '%{time_total}\n' "http://$host:$ORIGIN/small"
        done | sort -n | awk '{a[NR]=$1} END {printf "%.3f %.3f", a[int(NR*0.5)]*1000, a[int(NR*0.99)]*1000}')
  printf '%-22s %10.1f MB/s   p50 %s ms   p99 %s ms\n' "$name" \
    "$(echo "$speed / 1000000" | bc -l)" ${lat% *} ${lat#* }
  echo "$name $speed $lat" >>"$WORK/results"
}
echo "1 GiB download and ${SAMPLES}-sample request latency (curl, HTTP/1.1, one request per connection)"
run direct "" 127.0.0.1
run bulwark "http://127.0.0.1:$FWD" bench.test
run socat+tinyproxy "http://127.0.0.1:$CHAIN" 127.0.0.1
awk '{s[$1]=$2; p[$1]=$3} END {
  printf "bulwark/direct %.2fx  bulwark/chain %.2fx  (targets: >= 0.5x direct, >= 2x chain)\n",
    s["bulwark"]/s["direct"], s["bulwark"]/s["socat+tinyproxy"]
  printf "added p50 latency: bulwark %.3f ms, chain %.3f ms (target: <= 1 ms and <= chain)\n",
    p["bulwark"]-p["direct"], p["socat+tinyproxy"]-p["direct"] }' "$WORK/results"
