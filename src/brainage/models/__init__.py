"""What a trained model is: the typed spec of a config entry, the networks, model files, one interface per model kind. Never imports the trainer."""
