"""Models: cards, architectures, safe weight loading, batched prediction, the ONNX Runtime engine.

Importing a submodule loads only what it needs: torch is imported when a torch module is built, exported or
run, never to read a card, choose a device on a machine without a CUDA driver, or score with ONNX Runtime."""
