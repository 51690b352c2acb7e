"""Lifelong (sequential) editing: many edits applied one after another, scored at checkpoints."""
