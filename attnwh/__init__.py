"""attnwh: a data warehouse of attention statistics for vision-language models."""

__version__ = "0.1.0"
