"""Milter front ends: the protocol codec, the session handler, and two transports
(asyncio, the default; libmilter through pymilter, the fallback)."""
