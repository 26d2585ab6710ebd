"""Durability: what survives a restart. No trio, no broker, no channels."""
