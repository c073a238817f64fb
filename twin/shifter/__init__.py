"""The shifting daemon: power signals -> placement policy -> migrations (asyncio)."""
