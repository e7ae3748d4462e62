"""Where a server's CPU time goes during a load: every thread of its process tree, from
/proc (Linux). The bench keeps each configuration's split per load (`server_cpu`): on a
small machine it says whether both cores were computing, or one of them waited, and how
much the event loop and the rest took."""
from __future__ import annotations

import os
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat(path: Path) -> list[str] | None:
    """The fields after "pid (comm)" of a /proc stat file (state, ppid, pgrp, ...), or None."""
    try:
        return path.read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):  # ended meanwhile, or no /proc
        return None


def processes():
    """(pid, stat fields after "pid (comm)") of every process /proc lists now."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        fields = _stat(stat)
        if fields is not None:
            yield int(stat.parent.name), fields


def descendants(root: int) -> list[int]:
    """`root` and every process below it (children, their children, ...), as /proc has them now."""
    children: dict[int, list[int]] = {}
    for pid, fields in processes():
        children.setdefault(int(fields[1]), []).append(pid)
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def thread_cpu(pids: list[int]) -> dict[str, tuple[str, float]]:
    """CPU seconds so far (user + system) of every thread of `pids`: "pid/tid" -> (name, s)."""
    out = {}
    for pid in pids:
        for task in Path(f"/proc/{pid}/task").glob("[0-9]*"):
            fields = _stat(task / "stat")
            if fields is None:
                continue
            try:
                name = (task / "comm").read_text().strip()
            except OSError:
                continue
            out[f"{pid}/{task.name}"] = (name, (int(fields[11]) + int(fields[12])) / _TICK)
    return out


def cpu_split(before: dict[str, tuple[str, float]], after: dict[str, tuple[str, float]], wall_s: float,
              top: int = 6) -> dict:
    """What each thread used between two `thread_cpu` readings, as a share of one core over
    `wall_s`: the busiest `top` threads (those of at least 1%), and the whole tree in cores."""
    used = {key: (name, cpu - before.get(key, (name, 0.0))[1]) for key, (name, cpu) in after.items()}
    busiest = sorted(used.items(), key=lambda item: -item[1][1])
    wall_s = max(wall_s, 1e-9)
    return {"cores": sum(cpu for _, cpu in used.values()) / wall_s,
            "threads": [{"thread": key, "name": name, "core_share": cpu / wall_s}
                        for key, (name, cpu) in busiest[:top] if cpu / wall_s >= 0.01]}


def cpu_line(split: dict) -> str:
    """One line for the console: cores in all, then each busy thread's share."""
    threads = ", ".join(f"{t['name']} {100 * t['core_share']:.0f}%" for t in split["threads"])
    return f"{split['cores']:.2f} cores: {threads}"
