"""Support shared by tests/, bench/ and the load test: the real `bentoml serve` on loopback (server.py), and the
pictures and prompts every measurement draws with (pictures.py). Not part of the bento."""
