"""Diagnosis: chest X-ray classification tasks, networks, calibrated inference, Grad-CAM heat maps, metrics."""
