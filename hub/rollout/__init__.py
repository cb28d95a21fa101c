"""Rollouts with quality gates: the pure core (no I/O, no broker, no SQLite, no torch).

- :mod:`.selector`  which agents a rollout targets (ids, tags, ``site=plant-a,hw=pi5``)
- :mod:`.plan`      the rollout plan: strategy, wave sizes, bake time, gates, failure policy
- :mod:`.gates`     gate evaluation over what one agent reports during the bake
- :mod:`.machine`   the state machine ``step(state, event, now) -> (state, actions)``

The hub runtime's rollout driver (:mod:`edgeloop.hub.runtime.rollouts`) feeds events in, carries the
actions out and persists the state after every step; see docs/rollouts.md.
"""
