"""What the networks learn: the lyrics corpus and synthetic long-range tasks."""
