#!/bin/bash
# Issue 20's "what must not move": today's main against the session's start (5533664), interleaved.
cd /work/main
for r in 1 2; do
  for side in base new; do
    if [ $side = base ]; then PY=/tmp/basevenv/bin/python; cd /tmp/base; else PY=/work/main/.venv/bin/python; cd /work/main; fi
    echo "== round $r $side load $(cat /proc/loadavg)"
    $PY -m tessera.server.cli bench --compare default --concurrency 1,8,32 --num-candidates 4 --out /tmp/perf/$side-q$r 2>&1 | tail -8
  done
done
for side in base new; do
  if [ $side = base ]; then PY=/tmp/basevenv/bin/python; cd /tmp/base; else PY=/work/main/.venv/bin/python; cd /work/main; fi
  echo "== contended $side load $(cat /proc/loadavg)"
  $PY -m tessera.server.cli bench --compare default --concurrency 1,32 --num-candidates 4 --contend 1 --out /tmp/perf/$side-c1 2>&1 | tail -8
done
echo PERF-DONE
