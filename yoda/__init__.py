"""Yoda policy core: requests, KV cache, schedulers, dispatcher, metrics. No simpy, no torch."""
