"""Local stack: a real Kafka (KRaft; one node, or three replicating ones) and a real redis-server on loopback."""

from deploy.local.stack import LocalStack, StackConfig, StackStatus, free_ports

__all__ = ["StackConfig", "LocalStack", "StackStatus", "free_ports"]
