"""The download queue: Hub downloads on a job queue of their own, so they run while a conversion
runs on the window's queue, one at a time (the network, not the CPU, is the limit).

A download is not a compute job, so it runs on this queue's in-process lane; its child-process
lane stays idle. A `JobsPanel` shows it like the window's queue.
"""

from __future__ import annotations

from app.gui.worker import JobQueue


class DownloadQueue(JobQueue):
    """The window's second `JobQueue`, for downloads."""
