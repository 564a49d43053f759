"""Who acts: mailboxes and actor refs, provider connection actors, the router, the gateway and
its client. The fault-injection kit lives in `actors.testing`.

Imports `protocol`, never `supervisors` (a test keeps it so).
"""

__all__: list[str] = []
