"""The typer command-line application."""
