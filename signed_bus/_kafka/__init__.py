"""The aiokafka adapter: producer, consumer, relay, topics and the isolating fetch."""
