"""`malmm train`'s job, one concern a module: `job` (`run_training`: every check that needs no model,
then the run), `settings` (a run's recipe and what it reads), `data` (examples, prompts, targets
and the validation split), `folder` (the run folder), `features` (clips to cached ViT features),
`trainer` (steps, validation, the best epoch and the resumable state) and `optimizer_state` (an
optimiser's state as safetensors and JSON). The model side of a step is models/training.py.

Importing this package, `job`, `settings`, `data` or `folder` loads no torch.
"""
