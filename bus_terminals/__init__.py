"""bus_terminals package."""
