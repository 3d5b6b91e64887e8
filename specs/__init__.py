"""Operation specs, one module per operation, grouped by domain. Imports ``runner`` only."""
