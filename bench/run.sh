#!/usr/bin/env bash
# The vmscope benchmark, one command (root): see docs/benchmarks.md.
#
#   bench/run.sh            N = 100, 1000, 5000, 10000, and every wave-2 feature
#                           priced at N = 1000; each configuration 3 times (~70 min)
#   bench/run.sh --quick    N = 100, 1000, shorter windows, 3 times (~25 min)
#   bench/run.sh --features only the feature configurations at N = 1000, 3 times (~25 min)
#   bench/run.sh --repeat K ...   K repetitions instead of 3 (the report gives medians and spreads)
#   bench/run.sh --no-build ...   reuse target/release/vmscope as it is
#   bench/run.sh --access   TLS, bearer auth and a bad-credential flood at N = 1000 (~3 min)
#   bench/run.sh --top      vmscope top: startup and CPU at a 1 s refresh, 200 VMs (~3 min)
#
# Other flags go to bench/bench.py (--help lists them). Builds the stand-in
# hypervisor and the floor with gcc, vmscope with `cargo build --release`,
# raises ulimits, then runs bench/bench.py. Every process, TAP and network
# namespace it starts is removed on exit, Ctrl-C or failure (bench.py cleans
# up itself; the trap below catches what a SIGKILLed driver leaves).
set -euo pipefail

if [ "$(id -u)" != 0 ]; then
    echo "bench/run.sh: must run as root (TAP devices, network namespaces, ulimits)" >&2
    exit 2
fi
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

build=1
access=0
top=0
mode=()
args=()
quick=0
sizes=""
prev=""
for a in "$@"; do
    case "$a" in
        --no-build) build=0 ;;
        --access) access=1 ;;
        --top) top=1 ;;
        # First, so that flags given after it (--sizes, --skip) win.
        --features) mode=(--sizes 1000 --skip sweep,independence,churn) ;;
        *) args+=("$a") ;;
    esac
    case "$a" in
        --quick) quick=1 ;;
        --sizes=*) sizes="${a#--sizes=}" ;;
    esac
    [ "$prev" = --sizes ] && sizes="$a"
    prev="$a"
done
if [ -z "$sizes" ]; then
    if [ "${#mode[@]}" -gt 0 ] || [ "$quick" = 1 ] || [ "$access" = 1 ] || [ "$top" = 1 ]; then
        sizes=1000
    else
        sizes=10000
    fi
fi
max_n=0
for n in ${sizes//,/ }; do
    [[ "$n" =~ ^[0-9]+$ ]] && [ "$n" -gt "$max_n" ] && max_n=$n
done

for tool in gcc ip wrk taskset python3 prometheus-process-exporter prometheus-node-exporter; do
    command -v "$tool" >/dev/null || {
        echo "bench/run.sh: $tool is missing (sudo scripts/install-deps.sh installs the lab's tools)" >&2
        exit 2
    }
done

WORK=$(mktemp -d /tmp/vmscope-bench.XXXXXX)
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    # Normally empty-handed: bench.py has already stopped everything.
    if [ -f "$WORK/pids" ]; then
        while read -r pid; do
            [ -n "$pid" ] && kill -KILL "$pid" 2>/dev/null || true
        done <"$WORK/pids"
    fi
    if [ -f "$WORK/taps" ]; then
        while read -r tap; do
            [ -n "$tap" ] && ip link del "$tap" 2>/dev/null || true
        done <"$WORK/taps"
    fi
    if [ -f "$WORK/netns" ]; then
        ip netns del "$(cat "$WORK/netns")" 2>/dev/null || true
    fi
    if [ -f "$WORK/pid_max" ]; then
        cat "$WORK/pid_max" >/proc/sys/kernel/pid_max 2>/dev/null || true
    fi
    if [ "$rc" != 0 ] && [ -d "$WORK" ]; then
        mkdir -p "$ROOT/bench/results/failed"
        for f in "$WORK"/*.log; do
            [ -f "$f" ] && cp "$f" "$ROOT/bench/results/failed/" || true
        done
        echo "bench/run.sh: failed (exit $rc); server logs copied to bench/results/failed/" >&2
    fi
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# 10 000 VMs x 5 held files, plus sockets: lift the descriptor and process limits.
ulimit -Hn 1048576 2>/dev/null || true
ulimit -n "$(ulimit -Hn)"
ulimit -u unlimited 2>/dev/null || true
# Without CAP_SYS_RESOURCE the hard limit stays put; vmscope and the floor
# then open what they cannot hold per read (slower, still correct): say so.
echo "bench: descriptor limit $(ulimit -n) ($max_n VMs want ~$((max_n * 5)) held files)" >&2
# Every stand-in is 3 tasks (main + 2 vCPU threads), each a PID; at N = 1000
# the independence test adds 5000 sleepers. 10 000 stand-ins do not fit in
# the default pid_max of 32768 next to everything else: raise it for the
# run (put back on exit; it only widens the PID range).
want_pids=$((max_n * 3 + 5000 + 8192))
pid_max=$(cat /proc/sys/kernel/pid_max)
if [ "$pid_max" -lt "$want_pids" ]; then
    if echo "$want_pids" >/proc/sys/kernel/pid_max 2>/dev/null; then
        echo "$pid_max" >"$WORK/pid_max"
        echo "bench: kernel.pid_max $pid_max -> $want_pids for this run" >&2
    else
        echo "bench: kernel.pid_max is $pid_max and cannot be raised: $max_n stand-ins may not all start" >&2
    fi
fi

echo "bench: building the stand-in hypervisor and the floor" >&2
if ! gcc -O2 -static -pthread -Wall -o "$WORK/standin" bench/standin/standin.c 2>"$WORK/gcc.log"; then
    echo "bench: no static libc, building the stand-in dynamically" >&2
    gcc -O2 -pthread -Wall -o "$WORK/standin" bench/standin/standin.c
fi
gcc -O2 -Wall -o "$WORK/floor" bench/floor/floor.c
gcc -O2 -Wall -o "$WORK/serve_floor" bench/floor/serve_floor.c

if [ "$build" = 1 ]; then
    echo "bench: cargo build --release -p vmscope" >&2
    cargo build --release -p vmscope
fi
VMSCOPE="$ROOT/target/release/vmscope"
[ -x "$VMSCOPE" ] || { echo "bench/run.sh: $VMSCOPE is missing (run without --no-build)" >&2; exit 2; }

if [ "$access" = 1 ]; then
    # What TLS, authentication and a flood of bad credentials cost (bench/access.py).
    exec python3 bench/access.py --work "$WORK" --vmscope "$VMSCOPE" --standin "$WORK/standin" "${args[@]}"
fi
if [ "$top" = 1 ]; then
    # What `vmscope top` costs at startup and per refresh (bench/top.py).
    # Not exec: the EXIT trap removes $WORK afterwards.
    python3 bench/top.py --work "$WORK" --vmscope "$VMSCOPE" --standin "$WORK/standin" "${args[@]}"
    exit 0
fi
python3 bench/bench.py --work "$WORK" --vmscope "$VMSCOPE" --standin "$WORK/standin" \
    --floor "$WORK/floor" --serve-floor "$WORK/serve_floor" --command "bench/run.sh $*" "${mode[@]}" "${args[@]}"
