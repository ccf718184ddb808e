"""Local stand-ins for upstream services, following their documented wire formats."""
