"""The service's durable store: the lead timeline, the score log, policies, the rescore queue and the webhook outbox."""
