"""signed-bus: signed, verified, replay-protected inference results over Kafka."""

__version__ = "0.1.0"

__all__ = ["__version__"]
