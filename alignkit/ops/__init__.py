"""Memory-efficient tensor operations shared by every method."""
