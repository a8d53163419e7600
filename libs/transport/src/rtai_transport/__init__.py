"""rtai_transport."""
