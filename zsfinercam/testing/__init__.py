"""What only tests and benchmarks use: independent reference implementations."""
