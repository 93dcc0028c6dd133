"""Jobs: the long runs as plain objects and functions with callbacks (a batch of videos with resume
and records, a watch session, training, evaluation, loading, doctor), usable from Python without a
terminal. Commands call them; they never import typer or rich."""
