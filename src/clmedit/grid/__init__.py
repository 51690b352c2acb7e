"""Many runs at once: one configuration's run (`cell`), the study and bench grids, and the Ray grid."""
