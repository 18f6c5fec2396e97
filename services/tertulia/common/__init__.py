"""Pieces every Tertulia component shares: settings, logging, the gateway's client, models."""
