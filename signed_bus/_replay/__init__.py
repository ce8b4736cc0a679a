"""The Redis replay guard: one nonce set shared by every consumer group."""
