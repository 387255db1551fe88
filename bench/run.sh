#!/usr/bin/env bash
# drbridge capacity benchmark: one command.
#
#   bash bench/run.sh            # default run (< 10 minutes on 2 cores, after install/build)
#   bash bench/run.sh --quick    # < 2 minutes
#   bash bench/run.sh --media    # + the media stage (skipped until drbridge anchors media)
#   bash bench/run.sh --help     # every option (rates, step length, targets, ...)
#
# Installs what is missing from Debian (sip-tester, kamailio, stunnel4, python3-matplotlib,
# linux-perf), builds drbridge in release, then runs bench/bench.py: SIPp load through drbridge
# in both directions (PBX->Teams UDP->TLS, Teams->PBX TLS->UDP; stunnel carries SIPp's TCP over
# mutual TLS with the lab certificates) and through Kamailio as a stateful proxy, call rate
# stepped up until calls fail or the set-up p99 passes 200 ms. Everything on 127.0.0.1.
# Results: bench/results/capacity.{json,md,png} (+ profile_*.txt); logs in bench/results/work/.
# Every process it starts is stopped when it ends, also on Ctrl-C.
#
# Options for this script (the rest go to bench.py): --no-install, --no-build.
set -euo pipefail
cd "$(dirname "$0")/.."

install=1
build=1
pass=()
media=0
results=bench/results   # bench.py's --results, where the relay comparison below writes too
prev=
for a in "$@"; do
    [ "$prev" = --results ] && results=$a
    prev=$a
    case "$a" in
        --results=*) results=${a#--results=}; pass+=("$a") ;;
        --media) media=1; pass+=("$a") ;;
        --no-install) install=0 ;;
        --no-build) build=0 ;;
        -h|--help)
            sed -n '2,17p' "$0"
            exec /usr/bin/python3 bench/bench.py --help
            ;;
        *) pass+=("$a") ;;
    esac
done

as_root() {
    if [ "$(id -u)" = 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo -n "$@"
    else
        echo "bench/run.sh: need root or sudo to run: $*" >&2
        return 1
    fi
}

if [ "$install" = 1 ]; then
    need=()
    command -v sipp >/dev/null 2>&1 || need+=(sip-tester)
    command -v kamailio >/dev/null 2>&1 || need+=(kamailio)
    command -v stunnel4 >/dev/null 2>&1 || need+=(stunnel4)
    command -v timeout >/dev/null 2>&1 || need+=(coreutils)
    command -v cc >/dev/null 2>&1 || need+=(gcc libc6-dev)
    [ -x /usr/bin/python3 ] || need+=(python3)
    /usr/bin/python3 -c 'import matplotlib' >/dev/null 2>&1 || need+=(python3-matplotlib)
    command -v perf >/dev/null 2>&1 || need+=(linux-perf)
    if [ "${#need[@]}" -gt 0 ]; then
        echo "bench/run.sh: installing ${need[*]}" >&2
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
        # linux-perf is optional (profiling at the knee): a failure there does not stop the run
        opt=()
        req=()
        for p in "${need[@]}"; do
            if [ "$p" = linux-perf ]; then opt+=("$p"); else req+=("$p"); fi
        done
        if [ "${#req[@]}" -gt 0 ]; then
            as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${req[@]}"
        fi
        if [ "${#opt[@]}" -gt 0 ]; then
            as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${opt[@]}" \
                || echo "bench/run.sh: linux-perf not installed: no profile at the knee" >&2
        fi
    fi
fi

if [ "$build" = 1 ]; then
    cargo build --release --bin drbridge
fi

# bench.py stops its own processes on exit and on signals; this trap is the backstop: it ends
# bench.py's process group and with it anything bench.py had not yet stopped.
child=
cleanup() {
    if [ -n "$child" ] && kill -0 "$child" 2>/dev/null; then
        kill -TERM "$child" 2>/dev/null || true
        sleep 3
        kill -KILL "$child" 2>/dev/null || true
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

/usr/bin/python3 bench/bench.py ${pass[@]+"${pass[@]}"} &
child=$!
wait "$child"
status=$?

# With --media: the media peer in the same run. The call-level media stage above has no peer
# (rtpengine is not a SIP proxy), so the relay itself is measured against rtpengine in
# userspace (bench/media/run.sh: 1000 G.711 streams RTP->RTP and RTP->SRTP, ratios
# drbridge/rtpengine) and the ratios are appended to the results.
if [ "$media" = 1 ]; then
    out=$results/media_relay_vs_rtpengine.txt
    if timeout -k 5 300 bash bench/media/run.sh 1000 10 > "$out" 2>&1; then
        {
            echo
            echo "Media relay against rtpengine (userspace) in the same run, 1000 G.711 streams, 10 s per mode:"
            echo
            echo '```'
            sed -n '/^mode  metric/,$p' "$out"
            echo '```'
        } >> "$results/capacity.md"
    else
        echo "bench/run.sh: the media relay comparison failed, see $out" >&2
    fi
fi
exit "$status"
