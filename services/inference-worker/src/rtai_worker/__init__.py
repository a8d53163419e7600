"""rtai_worker."""
