"""Models: cards, architectures, safe weight loading, batched prediction, the ONNX Runtime engine.

Importing a submodule loads only what it needs: ``card`` and ``bundled`` do not load torch."""
