"""amqpy: an AMQP 0-9-1 message broker on trio that behaves like RabbitMQ."""

__version__ = "0.1.0"

__all__ = ["__version__"]
