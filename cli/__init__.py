"""Command-line apps `unweight` and `infire`: argument parsing, progress, tables, exit codes."""
