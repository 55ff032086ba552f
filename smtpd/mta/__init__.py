"""The MTA side of the smtp process: outbound SMTP/LMTP sessions (session),
their value types (transfer) and the choice of next hop (routing)."""
