"""Service functions: the business logic behind the HTTP handlers (which stay thin)."""
