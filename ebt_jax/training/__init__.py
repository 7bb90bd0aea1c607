"""Train state, outer optimizer, objectives and the train/eval loop."""
