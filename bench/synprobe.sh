#!/usr/bin/env bash
# Probe-cost experiment (docs/health.md, "How probes are sent"): bench/c/synprobe.c's connect() and
# raw half-open SYN probes side by side, N probes/s for 5 s, 3 runs each, interleaved, against the C
# acceptor (bench/acceptor.c) in a namespace of its own behind a veth pair (198.51.100.0/24), and on
# loopback. Runs itself in a throwaway network namespace. Usage: bench/synprobe.sh [N...]
set -euo pipefail
if [ -z "${IPTLB_SYNPROBE_NETNS:-}" ]; then
  IPTLB_SYNPROBE_NETNS=1 exec unshare -n -- "$0" "$@"
fi
cd "$(dirname "$0")"
tmp=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$tmp"' EXIT
cc -O2 -o "$tmp/synprobe" c/synprobe.c
cc -O2 -o "$tmp/acceptor" acceptor.c
ip link set lo up
ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
"$tmp/acceptor" 20000 10000 > "$tmp/lo.out" &
lo_pid=$!
unshare -n -- "$tmp/acceptor" 20000 10000 0.0.0.0 > "$tmp/veth.out" &
veth_pid=$!
sleep 1
ip link add sp0 type veth peer name sp1 netns "$veth_pid"
ip addr add 198.51.100.1/24 dev sp0
ip link set sp0 up
nsenter -t "$veth_pid" -n ip link set lo up
nsenter -t "$veth_pid" -n ip addr add 198.51.100.2/24 dev sp1
nsenter -t "$veth_pid" -n ip link set sp1 up
sleep 2
echo "load: $(cut -d' ' -f1-3 /proc/loadavg)"
for n in "${@:-1000 10000}"; do
  for where in veth lo; do
    if [ $where = lo ]; then addr=127.0.0.1 pid=$lo_pid; else addr=198.51.100.2 pid=$veth_pid; fi
    for run in 1 2 3; do
      for mode in connect raw; do
        a0=$(ticks $pid)
        out=$("$tmp/synprobe" $mode $addr 20000 "$n" 5)
        a1=$(ticks $pid)
        echo "{\"n\":$n,\"where\":\"$where\",\"run\":$run,\"acceptorTicks\":$((a1 - a0)),\"probe\":$out}"
      done
    done
  done
done
