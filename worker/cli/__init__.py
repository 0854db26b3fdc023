"""The `carewatch` command (main: one Typer app, a function per command)."""
