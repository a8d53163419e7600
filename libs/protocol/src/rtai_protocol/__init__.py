"""rtai_protocol."""
