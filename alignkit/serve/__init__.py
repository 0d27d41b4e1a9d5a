"""Using a trained model: chat sessions (and, later, an OpenAI-compatible server)."""
