"""Moved to the CPU platform (`tessera.server.engine.platforms.turns`); this name stays for
the callers that import it from here (tests/server/engine/workers/test_turns.py)."""
from tessera.server.engine.platforms.turns import HANDOFF_S, NodeTurn, open_turn

__all__ = ["HANDOFF_S", "NodeTurn", "open_turn"]
