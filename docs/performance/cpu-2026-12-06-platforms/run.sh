#!/bin/bash
# Issue 20, second session: today's main against the session's start (67fdd7c), interleaved.
# 2 cores, torch 2.13.0 CPU build, libgomp, no OMP_*/GOMP_* variables; load average before each run.
OUT=${OUT:-/tmp/perf2}
for r in 1 2; do
  for side in base new; do
    if [ $side = base ]; then PY=/tmp/basevenv/bin/python; cd /tmp/base; else PY=/work/main/.venv/bin/python; cd /work/main; fi
    [ $r = 2 ] && [ $side = base ] && continue  # round 2 runs new first (below), so neither side always goes first
    echo "== round $r $side load $(cat /proc/loadavg)"
    $PY -m tessera.server.cli bench --compare default --concurrency 1,8,32 --num-candidates 4 --out $OUT/$side-q$r 2>&1 | tail -6
  done
  if [ $r = 2 ]; then
    cd /tmp/base; echo "== round 2 base load $(cat /proc/loadavg)"
    /tmp/basevenv/bin/python -m tessera.server.cli bench --compare default --concurrency 1,8,32 --num-candidates 4 --out $OUT/base-q2 2>&1 | tail -6
  fi
done
for side in base new; do
  if [ $side = base ]; then PY=/tmp/basevenv/bin/python; cd /tmp/base; else PY=/work/main/.venv/bin/python; cd /work/main; fi
  echo "== contended $side load $(cat /proc/loadavg)"
  $PY -m tessera.server.cli bench --compare default --concurrency 1,32 --num-candidates 4 --contend 1 --out $OUT/$side-c1 2>&1 | tail -6
done
echo PERF-DONE
