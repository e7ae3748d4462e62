#!/bin/bash
for r in 3 4; do
  for side in new base; do
    if [ $side = base ]; then PY=/tmp/basevenv/bin/python; cd /tmp/base; else PY=/work/main/.venv/bin/python; cd /work/main; fi
    echo "== round $r $side load $(cat /proc/loadavg)"
    $PY -m tessera.server.cli bench --compare default --concurrency 32 --num-candidates 4 --out /tmp/perf/$side-q$r 2>&1 | tail -1
  done
done
echo PERF2-DONE
