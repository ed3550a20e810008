"""``liminal bench``: liminal measured side by side with minimal reference servers.

``command`` holds the CLI, ``runner`` what is measured and in which order,
``processes`` the child processes (servers, Redis, load clients), ``load`` the
load client itself and ``report`` the table, JSON and chart.
"""

from __future__ import annotations

from .command import bench

__all__ = ["bench"]
