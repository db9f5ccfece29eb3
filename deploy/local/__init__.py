"""Local stack: a real single-node Kafka (KRaft) and a real redis-server on loopback."""

from deploy.local.stack import LocalStack, StackConfig, StackStatus, free_ports

__all__ = ["StackConfig", "LocalStack", "StackStatus", "free_ports"]
