"""Edge agent for city street cameras.

Data flow: ingest -> detect -> rules -> tickets -> outbox -> transport, with config, evidence and
health beside it. See docs/architecture.md.
"""

__version__ = "0.1.0"
