"""The PySide6 window: a thin layer over app.core jobs and plain data."""
