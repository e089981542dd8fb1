"""client_sdk: embed secure aggregation in an existing training loop."""
