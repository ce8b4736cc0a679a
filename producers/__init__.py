"""Reference producer agents for signed-bus: the inference agent and the demo's attacker.

They are built only on the public API (``from signed_bus import ...``) and run as commands
(``python -m producers.inference_agent``), configured from environment variables.
"""
