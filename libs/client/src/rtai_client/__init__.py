"""rtai_client."""
