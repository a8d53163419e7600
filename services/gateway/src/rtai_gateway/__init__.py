"""rtai_gateway."""
