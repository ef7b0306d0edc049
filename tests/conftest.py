"""Suite-wide defaults: shards started by tests (in-process or as processes) keep NPCs silent
unless a test asks for a model, since loading one costs seconds of CPU."""
import os

os.environ.setdefault("WORLDSMITH_NPC_MODEL", "none")
