"""What crosses between planes: snapshot and event schemas with their codecs, NATS subjects and adapters."""
