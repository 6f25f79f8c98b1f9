"""The service desk: riders' complaints with their ten-day clock and refunds, and the public
card page where a citizen sees what the back office knows of their card."""
