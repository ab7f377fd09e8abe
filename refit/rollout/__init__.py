"""Live rollout: a challenger that passed the gate is tried on live traffic (shadow,
then canary) before it becomes champion, and is stopped when live numbers turn bad."""
