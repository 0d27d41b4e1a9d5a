"""One module per method: data + model + loss + the training loop."""
