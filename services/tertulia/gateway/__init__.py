"""The chat gateway: an OpenAI-compatible and a simple chat API in front of the model server,
with auth, rate limits, input checks, moderation, memory and retrieval on the way.
"""
