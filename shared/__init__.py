"""The common library: event envelope, bus, database, outbox, consumer loop, config, HTTP edges."""
