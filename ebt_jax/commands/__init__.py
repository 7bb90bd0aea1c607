"""What the `ebt eval`, `ebt think` and `ebt sweep-inner` commands compute and print: reports
over a run directory, built on the library (ebt_jax/inference, ebt_jax/tasks)."""
