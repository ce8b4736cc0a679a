"""Reference consumer agents for signed-bus: the planner relay, the action agent and the auditor.

They are built only on the public API (``from signed_bus import ...``) and run as commands
(``python -m consumers.planner``), configured from environment variables.
"""
