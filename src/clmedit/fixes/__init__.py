"""Fix files: apply a list of fixes, save the edit, load it anywhere, export it."""
