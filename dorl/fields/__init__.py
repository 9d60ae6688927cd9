"""Whole microscope fields: white-cell box files, label-free white-cell detection, and its
scores against the box files."""
