"""The chat pipeline, one small step a module: auth, ratelimit, checks, moderation, memory,
retrieval, prompt; `chat` runs them in order and streams the answer.
"""
