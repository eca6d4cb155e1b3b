#!/usr/bin/env bash
# A/B of `router serve` checkouts, alternating short wrk runs so both see the same machine drift.
#
#   benchmarks/ab_serve.sh ROUNDS CONNS NAME=SRC_DIR [NAME=SRC_DIR ...]
#   e.g. git worktree add /tmp/base 7f90a22 && (cd /tmp/base && python setup.py -q build_ext --inplace)
#        benchmarks/ab_serve.sh 6 16 base=/tmp/base/src head=$PWD/src
#
# Each server: one worker, classifier on (model=auto), Prometheus and a fresh SQLite ledger, in front
# of benchmarks/static_upstream.py. Prints each variant's median, min and max requests/s, and the
# server process's CPU time per request (user + system, /proc/PID/stat): steadier than requests/s
# on a shared machine, since time other processes take is not counted.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
R=$1; C=$2; shift 2
W="$(mktemp -d)"
free_port() { python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
UP=$(free_port)
cat > "$W/policy.yaml" <<POLICY
version: 1
providers:
  local: {kind: vllm, base_url: "http://127.0.0.1:$UP/v1", region: eu}
models:
  bench: {provider: local, model: bench-model, price: {input_per_mtok: 0.1, output_per_mtok: 0.2}}
routes:
  coding:  {targets: [bench]}
  general: {targets: [bench]}
rules:
  - {if: {task: coding}, route: coding}
  - {route: general}
POLICY
cat > "$W/post.lua" <<'LUA'
wrk.method = "POST"
wrk.body = '{"model":"auto","messages":[{"role":"user","content":"Write a Python function that merges two sorted lists."}],"max_tokens":32}'
wrk.headers["Content-Type"] = "application/json"
LUA
python "$HERE/static_upstream.py" $UP & PIDS=($!)
# SIGINT drains the servers; the upstream, a background job of this non-interactive shell, ignores
# SIGINT and gets SIGTERM (else `wait` hangs, and so does a pipe reading this script's output).
trap 'kill -INT "${PIDS[@]:1}" 2>/dev/null; kill "${PIDS[0]}" 2>/dev/null; wait 2>/dev/null; rm -rf "$W"' EXIT
NAMES=(); PORTS=(); i=0
for spec in "$@"; do
  NAMES+=("${spec%%=*}"); PORTS+=("$(free_port)")
  PYTHONPATH="${spec#*=}" python -m router.cli serve --policy "$W/policy.yaml" --port ${PORTS[$i]} \
      --ledger "$W/${NAMES[$i]}.db" 2>"$W/${NAMES[$i]}.log" & PIDS+=($!)
  i=$((i + 1))
done
for p in "${PORTS[@]}"; do
  for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$p/readyz" && break; sleep 0.2; done
  wrk -t1 -c"$C" -d1s -s "$W/post.lua" "http://127.0.0.1:$p/v1/chat/completions" >/dev/null   # warm up
done
TCK=$(getconf CLK_TCK)
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }   # the server's user + system ticks
for r in $(seq "$R"); do
  for j in $(seq 0 $((i - 1))); do
    k=$(( (j + r) % i )); pid=${PIDS[$((k + 1))]}
    c0=$(cpu "$pid")
    out=$(wrk -t1 -c"$C" -d3s -s "$W/post.lua" "http://127.0.0.1:${PORTS[$k]}/v1/chat/completions")
    c1=$(cpu "$pid")
    echo "${NAMES[$k]} $(awk '/Requests\/sec/{print $2}' <<<"$out") $(awk '/requests in/{print $1}' <<<"$out") $((c1 - c0)) $TCK"
  done
done > "$W/result.txt"
python - "$W/result.txt" <<'PY'
import collections, statistics, sys
rps, cpu = collections.defaultdict(list), collections.defaultdict(list)
for line in open(sys.argv[1]):
    n, v, reqs, ticks, tck = line.split()
    rps[n].append(float(v)); cpu[n].append(int(ticks) / int(tck) / max(int(reqs), 1) * 1e6)
for n, v in rps.items():
    print(f"{n:14} median {statistics.median(v):8.0f}  min {min(v):7.0f}  max {max(v):7.0f} req/s  "
          f"server CPU {statistics.median(cpu[n]):6.1f} us/request (min {min(cpu[n]):.1f})  runs={len(v)}")
PY
