"""The shared kernel: everything a service needs that is not its own domain.

config, database, gRPC server bootstrap, interceptors (auth, errors, logging, tracing),
permissions, NATS helpers with a transactional outbox, health and migrations.
"""
