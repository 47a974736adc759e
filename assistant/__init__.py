"""The desktop assistant: an OpenAI-compatible local HTTP server over the P/D session, and a chat page.

``pdlink serve --package DIR [--cloud ws://...]`` runs it. Every request goes through the device's
``Session`` (``pdlink.edge.session``); concurrent requests share one engine whose local decodes are batched
(``batch_core`` / ``batch_engine``), and a conversation's next turn starts from the KV cache of the last
(``prefix_cache``).
"""
