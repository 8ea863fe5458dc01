"""Training: the loop (trainer), its loss, schedules and resumable state, and the text-to-model pipeline."""
