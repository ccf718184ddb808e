"""Where result files live: a local directory by default; signed, expiring URLs to reach them."""
