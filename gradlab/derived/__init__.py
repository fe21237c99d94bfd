"""Derived tables, one module per measure: derive(tables, columns) -> tables, made from the stored rows
at every assemble. They change no point's rows, so the source digest leaves them out (env.NOT_NUMBERS)."""
