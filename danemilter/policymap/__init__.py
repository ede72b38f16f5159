"""The policy socket: Postfix TLS-policy socketmap and Exim RCPT line (docs/policy-socket.md)."""
