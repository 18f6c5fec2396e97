"""The chat platform bots: one shared adapter, one thin module per platform."""
