"""The book's own style of code, kept only as a speed and behaviour reference."""
