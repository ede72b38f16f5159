"""danemilter: per-recipient DANE (RFC 7672) decisions for Postfix and Sendmail."""

__version__ = "0.1.0"
