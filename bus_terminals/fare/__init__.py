"""The fare core: pure, no I/O; time is always an argument."""
