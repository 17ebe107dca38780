"""Per-region serving: the auction, tracking endpoints and the publisher tag."""
