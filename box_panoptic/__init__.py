"""box_panoptic (placeholder during install)."""
