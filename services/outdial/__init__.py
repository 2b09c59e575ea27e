"""outdial: an outbound campaign dialer built as four gRPC services over PostgreSQL and Redis."""

__version__ = "0.1.0"
