"""Per-modality candidate parametrisations, objectives and metrics."""
