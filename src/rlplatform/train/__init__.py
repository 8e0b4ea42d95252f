"""Training stage: RLlib learns from store samples and publishes ONNX models."""
