"""The Score Retention analysis that picks the SAP window, once per model (torch)."""
