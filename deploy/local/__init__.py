"""Local stack: a real single-node Kafka (KRaft) and a real redis-server on loopback."""

from deploy.local.stack import StackConfig, LocalStack, StackStatus

__all__ = ["StackConfig", "LocalStack", "StackStatus"]
