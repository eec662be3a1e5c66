"""synthmed: medical image synthesis (modality translation and paired image + mask generation)."""

__version__ = "0.1.0"
