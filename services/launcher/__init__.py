"""The launcher: starts PostgreSQL, NATS, every service and Envoy as one mesh (`make run`, the
end-to-end tests) and renders the gateway's Envoy config (also for Kubernetes)."""
