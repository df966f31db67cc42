"""The monthly job's steps, the job itself, the replay of past months and the demo."""
