"""Using a trained model: chat sessions and the OpenAI-compatible server (`alignkit serve`)."""
