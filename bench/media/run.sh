#!/usr/bin/env bash
# Media relay benchmark: drbridge's MediaEngine vs rtpengine (userspace), same load generator.
# Usage: bench/media/run.sh [STREAMS] [SECS]     (defaults 1000 streams, 12 s per run; 4 runs)
# Prints one RESULT line per run and the ratios drbridge/rtpengine.
set -euo pipefail
cd "$(dirname "$0")/../.."
STREAMS=${1:-1000}
SECS=${2:-12}
NG=127.0.0.1:2223

command -v rtpengine >/dev/null || { apt-get install -y rtpengine-daemon >/dev/null; }

# build first (not timed); cargo prints the executable path
BIN=$(cargo bench --bench media_bench --no-run 2>&1 | sed -n 's/.*Executable .*(\(.*\)).*/\1/p' | tail -1)
[ -x "$BIN" ] || { echo "bench binary not built" >&2; exit 1; }

OUT=$(mktemp -d)
LOG=$OUT/rtpengine.log
timeout -k 5 300 rtpengine --config-file=none --table=-1 --interface=127.0.0.1 --listen-ng=$NG \
  --foreground --port-min=20000 --port-max=40000 --num-threads=2 --log-level=4 >"$LOG" 2>&1 &
WRAP=$!
trap 'kill $WRAP 2>/dev/null || true; wait $WRAP 2>/dev/null || true' EXIT
# wait until the ng port answers a ping (bounded)
python3 - "$NG" <<'PY'
import socket, sys, time
host, port = sys.argv[1].split(":")
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(0.2)
deadline = time.time() + 10
while time.time() < deadline:
    try:
        s.sendto(b"p1 d7:command4:pinge", (host, int(port)))
        if b"pong" in s.recv(1000): sys.exit(0)
    except OSError: pass
sys.exit("rtpengine did not answer ng ping")
PY
RTPE=$(pgrep -P $WRAP)   # the rtpengine process under `timeout` (for its /proc/PID/stat CPU)

run() { timeout -k 5 120 "$BIN" --target "$1" --mode "$2" --streams "$STREAMS" --secs "$SECS" --ng $NG --pid $RTPE | tee -a "$OUT/results"; }
for mode in rtp srtp; do
  run drbridge $mode
  run rtpengine $mode
done

python3 - "$OUT/results" <<'PY'
import sys
rows = {}
for line in open(sys.argv[1]):
    if not line.startswith("RESULT"): continue
    kv = dict(x.split("=", 1) for x in line.split()[1:])
    rows[(kv["target"], kv["mode"])] = kv
print()
print("mode  metric          drbridge   rtpengine   ratio drbridge/rtpengine")
for mode in ("rtp", "srtp"):
    d, r = rows.get(("drbridge", mode)), rows.get(("rtpengine", mode))
    if not d or not r: continue
    for m, better in (("pps", "higher"), ("cpu_cores", "lower"), ("pps_per_core", "higher"), ("loss_pct", "lower"), ("p50_us", "lower"), ("p99_us", "lower")):
        a, b = float(d[m]), float(r[m])
        ratio = f"{a/b:.2f}" if b else "n/a"
        print(f"{mode:5} {m:15} {a:10.3f} {b:11.3f}   {ratio:>6}  ({better} is better)")
PY
