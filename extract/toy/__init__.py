"""The embedded default: synthetic shapes data and tiny LLaVA-architecture models."""
