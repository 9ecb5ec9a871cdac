"""Run directories, manifests, metrics logging, atomic checkpoints, resume, seeding and devices."""
