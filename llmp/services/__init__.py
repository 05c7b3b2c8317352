"""Services: keys, limits, usage, files, batches, webhooks, inference (what routes and workers call)."""
