"""Commands: the terminal. The only layer that imports typer and rich: parse options, call one job,
show its progress and map its outcome to an exit code."""
